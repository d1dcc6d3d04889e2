// swift-tools-version: 6.2
import PackageDescription

// The sanitizer builds (make test-asan, make test-tsan) leave the HTTP surface out: Hummingbird and its
// dependencies would triple their build time, and `make test` runs the HTTP tests. FUSEBOX_HTTP marks the
// code that needs it.
let withHTTP = Context.environment["FUSEBOX_WITHOUT_HTTP"] == nil
let httpSettings: [SwiftSetting] = withHTTP ? [.define("FUSEBOX_HTTP")] : []

let package = Package(
    name: "fusebox",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Hiredis", targets: ["Hiredis"]),
        .library(name: "Fusebox", targets: ["Fusebox"]),
        .library(name: "FuseboxRedis", targets: ["FuseboxRedis"]),
        .library(name: "FuseboxTestKit", targets: ["FuseboxTestKit"]),
        .library(name: "FuseboxTracing", targets: ["FuseboxTracing"]),
        .executable(name: "fusebox", targets: ["FuseboxCLI"]),
    ] + (withHTTP ? [
        .library(name: "FuseboxHTTP", targets: ["FuseboxHTTP"]),
        .library(name: "FuseboxHTTPClient", targets: ["FuseboxHTTPClient"]),
        .library(name: "FuseboxGRPC", targets: ["FuseboxGRPC"]),
    ] : []),
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: [.defaults, "Reloading", "YAML"]),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.0"),
        // `make docs`: the DocC catalogs of the public modules (Sources/*/*.docc).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ] + (withHTTP ? [
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
    ] : []),
    targets: [
        // No `pkgConfig:` here: Debian's hiredis.pc adds -D_FILE_OFFSET_BITS=64, which SwiftPM drops with a
        // warning on every build. The headers and library are in the default paths; `make deps` checks for them
        // with pkg-config and installs libhiredis-dev when they are missing.
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"]), .brew(["hiredis"])]
        ),
        // Small C helpers: the current CPU (per-CPU lanes and counters), a close-on-exec pipe (test-kit watchdogs).
        .target(name: "CFusebox"),
        // The one lock type of every module: `Synchronization.Mutex`, or a pthread mutex in a ThreadSanitizer
        // build (`make test-tsan`), where the futex-based `Mutex` shows every guarded access as a race.
        .target(name: "FuseboxLocking"),
        .target(
            name: "Hiredis",
            dependencies: ["CHiredis", "FuseboxLocking"]
        ),
        .target(
            name: "Fusebox",
            dependencies: [
                "CFusebox", "FuseboxLocking",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "FuseboxRedis",
            dependencies: [
                "Fusebox", "FuseboxLocking", "Hiredis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // The Lua scripts, embedded as they are in lua/ (Scripts is a link to it): no generated copy to keep in step.
            resources: [
                .embedInCode("Scripts/breaker.lua"),
                .embedInCode("Scripts/lease.lua"),
                .embedInCode("Scripts/members.lua"),
                .embedInCode("Scripts/override.lua"),
            ]
        ),
        // The breaker's attributes and events on the caller's active span: its own product, so that only an
        // application that traces builds swift-distributed-tracing.
        .target(
            name: "FuseboxTracing",
            dependencies: ["Fusebox", .product(name: "Tracing", package: "swift-distributed-tracing")]
        ),
        // Child processes: the runner behind `fusebox run` (posix_spawn, reaped at once) and the private
        // redis-server `fusebox demo` starts. In the product, so that the `fusebox` binary links no test kit.
        .target(
            name: "FuseboxProcess",
            dependencies: ["CFusebox", "FuseboxLocking", "Hiredis"]
        ),
        .target(
            name: "FuseboxTestKit",
            dependencies: [
                "Hiredis", "Fusebox", "CFusebox", "FuseboxLocking", "FuseboxProcess",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "FuseboxCLI",
            dependencies: [
                "Hiredis", "Fusebox", "FuseboxLocking", "FuseboxRedis", "FuseboxProcess",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
            ] + (withHTTP ? ["FuseboxHTTP"] : []),
            swiftSettings: httpSettings
        ),
        // The kinds of test suite and the turns they take (Tests/TestKinds): only the test targets depend on it.
        .target(name: "TestKinds", path: "Tests/TestKinds"),
        .testTarget(
            name: "HiredisTests",
            dependencies: ["Hiredis", "FuseboxTestKit", "TestKinds", .product(name: "PropertyBased", package: "swift-property-based")]
        ),
        .testTarget(
            name: "FuseboxRedisTests",
            dependencies: [
                "Fusebox", "FuseboxLocking", "FuseboxRedis", "Hiredis", "FuseboxTestKit", "TestKinds",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "FuseboxCLITests",
            dependencies: [
                "Fusebox", "FuseboxCLI", "FuseboxLocking", "FuseboxRedis", "Hiredis", "FuseboxTestKit", "TestKinds",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ] + (withHTTP ? [.product(name: "AsyncHTTPClient", package: "async-http-client")] : []),
            swiftSettings: httpSettings
        ),
        .testTarget(
            name: "FuseboxTracingTests",
            dependencies: [
                "Fusebox", "FuseboxTracing", "FuseboxRedis", "FuseboxTestKit", "TestKinds",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "FuseboxTests",
            dependencies: [
                "Fusebox", "FuseboxLocking", "FuseboxTestKit", "TestKinds",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

if withHTTP {
    package.targets += [
        // The operator's HTTP surface: admin routes, Prometheus export, the dashboard. Its own target and product,
        // so that applications that only need breakers never build an HTTP server.
        .target(
            name: "FuseboxHTTP",
            dependencies: [
                "Fusebox", "FuseboxLocking",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            resources: [
                .embedInCode("Dashboard/dashboard.html"),
                .embedInCode("Dashboard/dashboard.css"),
                .embedInCode("Dashboard/dashboard.js"),
            ]
        ),
        // AsyncHTTPClient through a breaker per destination, with retries that honour Retry-After: its own product,
        // so that an application that makes no HTTP calls builds none of it.
        .target(
            name: "FuseboxHTTPClient",
            dependencies: [
                "Fusebox", "FuseboxLocking",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // A grpc-swift 2 client interceptor guarding each call by a breaker per service: its own product.
        .target(
            name: "FuseboxGRPC",
            dependencies: [
                "Fusebox", "FuseboxLocking",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
            ]
        ),
        .testTarget(
            name: "FuseboxGRPCTests",
            dependencies: [
                "Fusebox", "FuseboxGRPC", "FuseboxLocking", "FuseboxRedis", "FuseboxTestKit", "TestKinds",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "FuseboxHTTPClientTests",
            dependencies: [
                "Fusebox", "FuseboxHTTPClient", "FuseboxRedis", "FuseboxTestKit", "TestKinds",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "FuseboxHTTPTests",
            dependencies: [
                "Fusebox", "FuseboxHTTP", "FuseboxRedis", "Hiredis", "FuseboxTestKit", "TestKinds",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
    ]
}
