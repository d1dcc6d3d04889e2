"use strict";
// The Fusebox dashboard: polls GET circuit-breakers, and redraws a card the moment an event-stream
// transition names it. Paths are relative to where the page is mounted.
(function () {
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const cards = new Map();        // name -> { element, history: [failure rates], transitions: [lines] }
  const $ = (id) => document.getElementById(id);
  let refreshTimer = null;
  let lastData = null;

  function token() { return sessionStorage.getItem("fusebox-token"); }

  function seconds(ms) {
    if (ms == null) return "—";
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " m " + Math.floor((ms % 60000) / 1000) + " s";
  }

  function percent(x) { return (x * 100).toFixed(1) + " %"; }

  function card(name) {
    let entry = cards.get(name);
    if (entry) return entry;
    const element = $("card").content.firstElementChild.cloneNode(true);
    element.dataset.name = name;
    element.querySelector(".name").textContent = name;
    element.querySelectorAll("button").forEach((button) => {
      button.addEventListener("click", () => act(name, button.dataset.action));
    });
    entry = { element, history: [], transitions: [], retryAt: null };
    cards.set(name, entry);
    const names = Array.from(cards.keys()).sort();
    const next = names[names.indexOf(name) + 1];
    $("cards").insertBefore(element, next ? cards.get(next).element : null);
    return entry;
  }

  function setState(entry, state) {
    entry.element.dataset.state = state;
    entry.element.querySelector(".state").textContent = state.toUpperCase();
  }

  function draw(name, breaker) {
    const entry = card(name);
    setState(entry, breaker.state);
    entry.history.push(breaker.failure_rate);
    if (entry.history.length > 60) entry.history.shift();
    const step = 120 / Math.max(1, entry.history.length - 1);
    entry.element.querySelector("polyline").setAttribute("points",
      entry.history.map((rate, i) => (i * step).toFixed(1) + "," + (27 - rate * 26).toFixed(1)).join(" "));
    const score = entry.element.querySelector(".health-score");
    score.textContent = breaker.health_score + " / 100";
    score.dataset.band = breaker.health_score >= 80 ? "good" : breaker.health_score >= 50 ? "fair" : "poor";
    entry.element.querySelector(".failure-rate").textContent = percent(breaker.failure_rate);
    entry.element.querySelector(".window").textContent = breaker.window_calls + " calls, " + breaker.failure_count + " failed";
    entry.element.querySelector(".rejections").textContent = breaker.rejection_count + " (" + percent(breaker.rejection_rate) + ")";
    entry.retryAt = breaker.time_until_retry_ms == null ? null : Date.now() + breaker.time_until_retry_ms;
    entry.element.querySelector(".version").textContent = breaker.version;
    entry.element.querySelector(".would-reject").textContent = breaker.would_reject > 0 ? breaker.would_reject + " (shadow mode)" : "0";
    let reason = breaker.isolation_reason ? "isolated: " + breaker.isolation_reason : breaker.last_reason;
    if (breaker.isolated_until) reason += " — ends by itself at " + breaker.isolated_until;
    if (breaker.override_expires_at) reason += " — policy override ends at " + breaker.override_expires_at;
    entry.element.querySelector(".reason").textContent = reason;
    tick(entry);
  }

  function tick(entry) {
    const left = entry.retryAt == null ? null : Math.max(0, entry.retryAt - Date.now());
    entry.element.querySelector(".retry").textContent = seconds(left);
  }

  function render(data) {
    lastData = data;
    $("scope").textContent = data.scope;
    const s = data.summary;
    $("health").textContent = s.health;
    $("health").dataset.health = s.health;
    $("summary").innerHTML = "";
    for (const [label, value, state] of [["breakers", s.total_breakers], ["closed", s.closed, "closed"], ["open", s.open, "open"],
      ["half-open", s.half_open, "half_open"], ["isolated", s.isolated, "isolated"]]) {
      const span = document.createElement("span");
      span.innerHTML = "<b></b> " + label;
      span.querySelector("b").textContent = value;
      if (state) span.dataset.state = state;
      $("summary").appendChild(span);
    }
    for (const [name, breaker] of Object.entries(data.breakers)) draw(name, breaker);
    for (const name of Array.from(cards.keys())) {
      if (!(name in data.breakers)) { cards.get(name).element.remove(); cards.delete(name); }
    }
  }

  // A transition notice redraws one card before the next listing arrives: the header's counts by state follow the
  // cards at once, so the two never disagree (the verdict waits for the listing, which applies its rule).
  function recount() {
    for (const span of document.querySelectorAll("#summary span[data-state]")) {
      let count = 0;
      for (const entry of cards.values()) if (entry.element.dataset.state === span.dataset.state) count++;
      span.querySelector("b").textContent = count;
    }
  }

  async function refresh() {
    refreshTimer = null;
    try {
      const response = await fetch(base + "circuit-breakers", { cache: "no-store" });
      const data = await response.json();
      if (!response.ok) throw new Error(data.message || response.statusText);
      $("problem").hidden = true;
      render(data);
      refreshAudit();
      return true;
    } catch (error) {
      $("problem").hidden = false;
      $("problem").textContent = "Cannot read the breakers: " + error.message;
      $("health").textContent = "unknown";
      $("health").dataset.health = "critical";
      return false;
    }
  }

  async function refreshAudit() {
    try {
      const response = await fetch(base + "audit?limit=10", { cache: "no-store" });
      if (!response.ok) return;
      const data = await response.json();
      const list = $("audit");
      list.innerHTML = "";
      for (const entry of data.entries) {
        const line = document.createElement("li");
        line.textContent = entry.at + "  " + entry.by + "  " + entry.action + " " + entry.breaker + (entry.reason ? " (" + entry.reason + ")" : "");
        list.appendChild(line);
      }
      if (data.entries.length === 0) list.innerHTML = "<li>none yet</li>";
    } catch (error) { /* the breakers' own error is shown above */ }
  }

  function refreshSoon() {
    if (refreshTimer == null) refreshTimer = setTimeout(refresh, 150);
  }

  async function act(name, action) {
    let body;
    if (action === "isolate") {
      const reason = prompt("Why isolate '" + name + "'? (shown in every rejection)");
      if (!reason) return;
      const lasting = prompt("For how long? e.g. 30m or 2h (empty: until reset)", "");
      if (lasting === null) return;
      body = JSON.stringify(lasting.trim() ? { reason, for: lasting.trim() } : { reason });
    }
    for (let attempt = 0; attempt < 2; attempt++) {
      const headers = { "Content-Type": "application/json" };
      if (token()) headers["Authorization"] = "Bearer " + token();
      const response = await fetch(base + "circuit-breakers/" + encodeURIComponent(name) + "/" + action,
        { method: "POST", headers, body });
      if (response.status === 401 && attempt === 0) {
        const given = prompt("This server needs its admin token for '" + action + "':");
        if (!given) return;
        sessionStorage.setItem("fusebox-token", given);
        continue;
      }
      const data = await response.json();
      if (!response.ok) { alert(data.message || response.statusText); return; }
      // The card and the header (counts, verdict) change together: both are drawn from one fresh listing, so the
      // page never shows a CLOSED card under a header that still counts it open. The action's own reply draws the
      // card only when the listing cannot be read.
      if (!(await refresh())) draw(name, data);
      return;
    }
  }

  function listen() {
    const source = new EventSource(base + "events");
    source.addEventListener("open", () => { $("live").dataset.live = "live"; $("live").textContent = "live"; refreshSoon(); });
    source.addEventListener("error", () => { $("live").dataset.live = "lost"; $("live").textContent = "reconnecting"; });
    source.addEventListener("transition", (event) => {
      const notice = JSON.parse(event.data);
      const entry = card(notice.name);
      setState(entry, notice.state);
      entry.element.querySelector(".version").textContent = notice.version;
      entry.element.querySelector(".reason").textContent = notice.reason;
      entry.retryAt = notice.time_until_retry_ms == null ? null : Date.now() + notice.time_until_retry_ms;
      const line = document.createElement("li");
      line.textContent = new Date().toLocaleTimeString() + " " + (notice.from ? notice.from.toUpperCase() + " → " : "") +
        notice.state.toUpperCase() + " (" + notice.reason + ")";
      const list = entry.element.querySelector(".transitions");
      list.insertBefore(line, list.firstChild);
      while (list.children.length > 5) list.lastChild.remove();
      tick(entry);
      recount();
      refreshSoon();
    });
  }

  setInterval(() => { for (const entry of cards.values()) tick(entry); }, 250);
  setInterval(refresh, 2000);
  refresh();
  listen();
})();
