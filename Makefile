# Fusebox: `make demo` and `make test` work on a fresh Debian/Ubuntu machine with Swift installed.
SWIFT ?= swift
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := libhiredis-dev redis-server redis-tools docker-compose stunnel4 openssl curl spin gcc iproute2

PROMETHEUS_TOOLS := .build/prometheus/usr/bin

.PHONY: deps browser-deps prometheus-tools build test test-browser test-faults test-soak test-asan test-tsan model demo bench clean docs

## Installs what is missing: hiredis headers, redis-server, redis-cli, docker-compose (only to validate
## docker-compose.yml in the tests), stunnel4 and openssl (the TLS tunnel test), spin and gcc (the protocol models),
## iproute2 (the network-partition test's namespaces and veth links). apt-get update first; sudo when not root.
deps:
	@missing=""; \
	[ -f /usr/include/hiredis/hiredis.h ] || missing="$$missing libhiredis-dev"; \
	command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v stunnel4 >/dev/null 2>&1 || missing="$$missing stunnel4"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v spin >/dev/null 2>&1 || missing="$$missing spin"; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	else \
		echo "make deps: $(APT_PACKAGES) already installed"; \
	fi

## Debian's prometheus package's promtool and prometheus, for the operator kit's tests (Docs/prometheus,
## Docs/grafana): the package is downloaded and unpacked into $(PROMETHEUS_TOOLS), not installed, so that no
## Prometheus service starts on this machine; the tests start their own on a free loopback port.
prometheus-tools:
	@if [ -x $(PROMETHEUS_TOOLS)/promtool ] && [ -x $(PROMETHEUS_TOOLS)/prometheus ]; then 		echo "make prometheus-tools: $(PROMETHEUS_TOOLS) has promtool and prometheus"; 	else 		set -e; directory=$$(mktemp -d); 		( cd $$directory && apt-get download prometheus 2>/dev/null ) 			|| { $(SUDO) apt-get update -q && ( cd $$directory && apt-get download prometheus ); }; 		mkdir -p .build/prometheus && dpkg-deb -x $$directory/prometheus_*.deb .build/prometheus; 		rm -rf $$directory; 		echo "make prometheus-tools: unpacked Debian's prometheus into .build/prometheus"; 	fi

## What the dashboard's browser test needs: Debian's chromium and chromium-driver, Selenium from PyPI. When they
## cannot be installed, the browser test is skipped with a loud message (and only then).
browser-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "make browser-deps: installing$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing \
			|| echo "make browser-deps: could not install$$missing"; \
	fi; \
	python3 -c "import selenium" 2>/dev/null || python3 -m pip install -q --root-user-action=ignore selenium \
		|| echo "make browser-deps: could not install selenium"

build: deps
	$(SWIFT) build

## Builds and runs every test against real redis-server processes the tests start themselves: one plain `swift test`.
## Each suite names its kind (unit, integration, timing-bound, alone; Tests/TestKinds) and kinds take turns, so that on
## two cores the suites that start many processes never run beside the suites whose figures are timing bounds. Then
## the dashboard in a real browser and the protocol models.
test: deps browser-deps prometheus-tools
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	@$(MAKE) --no-print-directory test-browser
	@$(MAKE) --no-print-directory model

## The protocol models (Tests/Model/*.pml), checked exhaustively by SPIN: the write protocol (every outcome counted
## exactly once, a window that crosses a threshold opens the breaker) and the half-open permits (never more probes
## at once than permitted). Each is checked again with its fix taken out, where SPIN must find the violation.
model: deps
	@Tests/Model/check

## The exact-count suites in a loop for SOAK_MINUTES (60) with another core kept busy; fails on the first miscount.
SOAK_MINUTES ?= 60
test-soak: deps
	$(SWIFT) build --build-tests
	@Tests/soak $(SOAK_MINUTES) "ScaleTests|FleetTests|FaultInjectionTests|FaultTests"

## The dashboard in real headless Chromium against `fusebox serve` (Tests/Browser/dashboard_test.py).
test-browser: browser-deps
	$(SWIFT) build --product fusebox
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && python3 -c "import selenium" 2>/dev/null; then \
		python3 Tests/Browser/dashboard_test.py; \
	else \
		echo "##################################################################"; \
		echo "# SKIPPED: the dashboard browser test: Chromium, chromedriver or  #"; \
		echo "# Selenium could not be installed on this machine (make browser-deps)"; \
		echo "##################################################################"; \
	fi

## The fault-injection suites alone (`make test` runs them too), then the figure each fault produced
## (Docs/reliability.md).
test-faults: deps
	$(SWIFT) build --build-tests
	@mkdir -p .build; $(SWIFT) test --filter "FaultInjection|FaultTests|MemoryTests|PartitionTests" > .build/test-faults.log 2>&1; status=$$?; \
	grep -v "^fault-figure" .build/test-faults.log | grep -E "^(✔|✘|↳)|error" ; \
	echo; echo "fault | figures"; grep "^fault-figure" .build/test-faults.log | cut -d'|' -f2-; exit $$status

## The Redis client's tests under AddressSanitizer (its own build directory); XCTest's harness leaks at exit are
## suppressed by .ci/lsan.supp. Both sanitizer builds leave the HTTP surface out (FUSEBOX_WITHOUT_HTTP, see
## Package.swift): Hummingbird would triple their build time, and `make test` runs the HTTP tests.
test-asan: deps
	FUSEBOX_WITHOUT_HTTP=1 $(SWIFT) build --build-tests --sanitize=address --build-path .build-asan
	FUSEBOX_WITHOUT_HTTP=1 LSAN_OPTIONS=suppressions=$(CURDIR)/.ci/lsan.supp $(SWIFT) test --sanitize=address --build-path .build-asan --skip-build --filter HiredisTests

## The whole suite under ThreadSanitizer (its own build directory). `-DFUSEBOX_TSAN` swaps the futex-based
## `Mutex` for a pthread mutex that ThreadSanitizer understands (Sources/FuseboxLocking; .ci/tsan.supp names the few
## dependency types whose standard-library `Mutex` it cannot see, and says why); the first report stops
## the run. Tests run one at a time: the sanitizer slows every thread several times, and the timing bounds the
## suites assert hold for one test at a time on two cores. The rolling restart (20 `fusebox` processes at once, each
## under the sanitizer) is left to `make test`: it is about processes dying, which the sanitizer cannot watch, and
## twenty sanitized processes on two cores would measure the sanitizer's slowness rather than the leases. So is the
## 5-minute memory test: it measures a child process's resident size, which the sanitizer's shadow memory would swamp;
## and the network partitions (processes in network namespaces, whose code paths the other suites run under it).
test-tsan: deps
	FUSEBOX_WITHOUT_HTTP=1 $(SWIFT) build --build-tests --sanitize=thread --build-path .build-tsan -Xswiftc -DFUSEBOX_TSAN
	@echo "make test-tsan: every suite but the 20-process rolling restart, the 5-minute memory test and the network partitions (run by make test)"
	@mkdir -p .build-tsan; FUSEBOX_WITHOUT_HTTP=1 TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/.ci/tsan.supp" $(SWIFT) test --sanitize=thread --build-path .build-tsan --skip-build \
		--no-parallel --skip "rollingRestart|memoryWhileRedisAway|PartitionTests|ThrottlingTests|AdaptiveLimitTimingTests" -Xswiftc -DFUSEBOX_TSAN 2>&1 | tee .build-tsan/test.log; status=$${PIPESTATUS[0]}; \
	if grep -q "WARNING: ThreadSanitizer" .build-tsan/test.log; then echo "make test-tsan: ThreadSanitizer reported a race"; exit 1; fi; \
	exit $$status

## The DocC documentation of the public modules (their Sources/*/*.docc catalogs), into .build/docs; fails on a
## broken link and on a public symbol written here without a doc comment (.ci/undocumented.awk).
DOC_TARGETS = Fusebox FuseboxRedis Hiredis FuseboxHTTP FuseboxHTTPClient FuseboxGRPC FuseboxTracing FuseboxTestKit
docs: deps
	@mkdir -p .build/docs; status=0; for target in $(DOC_TARGETS); do \
	  echo "make docs: $$target"; \
	  if ! $(SWIFT) package --disable-sandbox generate-documentation --target $$target --output-path .build/docs/$$target.doccarchive \
	      --warnings-as-errors --experimental-documentation-coverage --coverage-summary-level detailed > .build/docs/$$target.log 2>&1; then \
	    grep -E "error|warning" .build/docs/$$target.log | grep -v "swift-distributed-tracing" | head -20; status=1; continue; \
	  fi; \
	  missing=$$(awk -f .ci/undocumented.awk .build/docs/$$target.log); \
	  if [ -n "$$missing" ]; then echo "make docs: $$target has public symbols without a doc comment:"; echo "$$missing"; status=1; fi; \
	done; [ $$status = 0 ] && echo "make docs: documentation in .build/docs"; exit $$status

## Builds and runs the main job against a private redis-server.
demo: deps
	$(SWIFT) build --product fusebox
	$(SWIFT) run fusebox demo --compare

## The hot-path suite (package-benchmark; allocation thresholds checked), the fleet benchmark's guarantees and costs,
## and a fleet of 200 instances on one Redis (fusebox-bench fleet).
bench: deps
	cd Benchmarks && $(SWIFT) package --disable-sandbox benchmark --no-progress --format markdown
	cd Benchmarks && $(SWIFT) package --disable-sandbox benchmark thresholds check --metric mallocCountTotal --skip "redis-.*" --no-progress
	$(SWIFT) run -c release --package-path Benchmarks fusebox-bench
	$(SWIFT) run -c release --package-path Benchmarks fusebox-bench scale
	$(SWIFT) run -c release --package-path Benchmarks fusebox-bench fleet

clean:
	rm -rf .build .build-asan .build-tsan Benchmarks/.build

