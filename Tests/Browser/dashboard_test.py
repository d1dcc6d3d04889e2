#!/usr/bin/env python3
"""The dashboard in real headless Chromium (Selenium): a trip made by another process turns its card OPEN without
a reload, within a second; the card's Reset button closes the breaker fleet-wide; a screenshot is saved.

Starts its own redis-server and `fusebox serve` on free loopback ports and stops them (by PID) when done.
Usage: python3 Tests/Browser/dashboard_test.py [--screenshot PATH] [--showcase]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUSEBOX = os.environ.get("FUSEBOX_BIN", os.path.join(ROOT, ".build", "debug", "fusebox"))
results = {"passed": 0, "failed": 0}


def check(condition, what):
    results["passed" if condition else "failed"] += 1
    print(("✔ " if condition else "✘ ") + what, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fusebox(*args):
    return subprocess.run([FUSEBOX, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1"})


def start_redis(directory):
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", directory],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                reply = subprocess.run(["redis-cli", "-p", str(port), "INFO", "server"], capture_output=True,
                                       text=True, timeout=5).stdout
                if f"process_id:{process.pid}" in reply:
                    return process, f"redis://127.0.0.1:{port}"
            except subprocess.TimeoutExpired:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.02)
        process.kill()
    raise RuntimeError("could not start redis-server")


def start_serve(url, log_path):
    log = open(log_path, "w")
    process = subprocess.Popen([FUSEBOX, "serve", "--redis", url, "--port", "0"], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(1000):
        with open(log_path) as text:
            for line in text:
                if line.startswith("dashboard: "):
                    return process, line.split(" ", 1)[1].strip()
        if process.poll() is not None:
            break
        time.sleep(0.01)
    process.kill()
    raise RuntimeError("fusebox serve did not start: " + open(log_path).read())


def make_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--no-proxy-server"]:
        options.add_argument(argument)
    for binary in ["/usr/bin/chromium", "/usr/bin/chromium-browser"]:
        if os.path.exists(binary):
            options.binary_location = binary
    driver_path = next((p for p in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] if os.path.exists(p)), None)
    return webdriver.Chrome(service=Service(driver_path) if driver_path else Service(), options=options)


def card_text(driver, name, selector):
    return driver.execute_script(
        "const c = Array.from(document.querySelectorAll('.card')).find(e => e.dataset.name === arguments[0]);"
        "return c ? c.querySelector(arguments[1]).textContent : ''", name, selector)


def card_health(driver, name):
    return driver.execute_script(
        "const c = Array.from(document.querySelectorAll('.card')).find(e => e.dataset.name === arguments[0]);"
        "return c ? c.querySelector('.health-score').textContent : null", name)


def card_state(driver, name):
    return driver.execute_script(
        "const c = Array.from(document.querySelectorAll('.card')).find(e => e.dataset.name === arguments[0]);"
        "return c ? c.dataset.state : null;", name)


def wait_for(predicate, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--screenshot", default=os.path.join(ROOT, ".build", "dashboard.png"))
    parser.add_argument("--showcase", action="store_true", help="more breakers in every state, for the docs' picture")
    arguments = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="fusebox-browser-")
    redis, url = start_redis(directory)
    serve = driver = None
    try:
        policy = ["--redis", url, "--consecutive-failures", "1", "--break-duration", "2m"]
        check(fusebox("run", "payments", *policy, "--", "true").returncode == 0, "payments made by a first process")
        if arguments.showcase:
            for name in ["search", "inventory", "shipping-quotes", "recommendations"]:
                fusebox("run", name, *policy, "--", "true")
            fusebox("run", "recommendations", *policy, "--", "false")
            fusebox("isolate", "shipping-quotes", "--redis", url, "--reason", "carrier API maintenance")
        serve, address = start_serve(url, os.path.join(directory, "serve.log"))
        driver = make_driver()
        driver.get(address)
        check(wait_for(lambda: card_state(driver, "payments") == "closed", 10), "the dashboard shows payments CLOSED")
        check(wait_for(lambda: driver.execute_script(
            "return document.getElementById('live').dataset.live") == "live", 10), "the event stream is connected")
        driver.execute_script("window.fuseboxMarker = 'no reload'")

        started = time.monotonic()
        trip = fusebox("run", "payments", *policy, "--", "false")
        tripped = time.monotonic()
        check(trip.returncode == 1, "another process trips payments")
        opened = wait_for(lambda: card_state(driver, "payments") == "open", 5)
        seen = time.monotonic()
        check(opened, "the card turns OPEN")
        check(seen - tripped < 1.0, f"within 1 s of the trip ({(seen - tripped) * 1000:.0f} ms after the tripping process "
                                    f"ended, {(seen - started) * 1000:.0f} ms after it started)")
        check(driver.execute_script("return window.fuseboxMarker") == "no reload", "without reloading the page")
        retry = driver.execute_script(
            "return Array.from(document.querySelectorAll('.card')).find(e => e.dataset.name === 'payments')"
            ".querySelector('.retry').textContent")
        check(retry.endswith("s") and retry != "—", f"the card counts down to the next probe ({retry})")
        check(wait_for(lambda: card_health(driver, "payments") == "10 / 100", 5),
              f"the card shows the open breaker's health score ({card_health(driver, 'payments')})")
        if arguments.showcase:
            time.sleep(2.5)
            driver.save_screenshot(arguments.screenshot)

        driver.execute_script(
            "Array.from(document.querySelectorAll('.card')).find(e => e.dataset.name === 'payments')"
            ".querySelector('button[data-action=reset]').click()")
        check(wait_for(lambda: card_state(driver, "payments") == "closed", 5), "Reset turns the card CLOSED")
        header = driver.execute_script(
            "const spans = Array.from(document.querySelectorAll('#summary span'));"
            "const count = label => spans.find(s => s.textContent.trim().split(' ').slice(1).join(' ') === label)"
            ".querySelector('b').textContent;"
            "const cards = state => Array.from(document.querySelectorAll('.card')).filter(c => c.dataset.state === state).length;"
            "return [count('open'), String(cards('open')), count('closed'), String(cards('closed'))]")
        check(header[0] == header[1] and header[2] == header[3],
              f"and the header agrees with the cards at once (open {header[0]} in the header, {header[1]} cards; "
              f"closed {header[2]}, {header[3]} cards)")
        shown = json.loads(fusebox("show", "payments", "--redis", url, "--json").stdout)
        check(shown["breaker"]["state"] == "closed", "and the breaker is closed in Redis, for every instance")
        if not arguments.showcase:
            os.makedirs(os.path.dirname(arguments.screenshot), exist_ok=True)
            driver.save_screenshot(arguments.screenshot)
        check(os.path.getsize(arguments.screenshot) > 10_000, f"a screenshot is saved ({arguments.screenshot})")

        isolated = fusebox("isolate", "payments", "--redis", url, "--reason", "deploy window", "--for", "30m")
        check(isolated.returncode == 0 and "ends by itself at" in isolated.stdout, f"an isolation for 30 minutes ({isolated.stdout.strip()})")
        check(wait_for(lambda: "ends by itself at" in card_text(driver, "payments", ".reason"), 5),
              f"the card says when the isolation ends ({card_text(driver, 'payments', '.reason')})")
    except Exception as error:  # a broken run is a failure, never a silent pass
        check(False, f"the run itself: {error!r}")
    finally:
        if driver is not None:
            driver.quit()
        for process in [serve, redis]:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
