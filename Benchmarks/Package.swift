// swift-tools-version: 6.1
import PackageDescription

// Fusebox's benchmarks, a package of their own so the library does not depend on the benchmark tooling.
//   swift package benchmark                                   # the hot-path suite (package-benchmark)
//   swift run -c release fusebox-bench [--redis URL] [--json]  # the multi-process fleet benchmark
let package = Package(
    name: "fusebox-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "fusebox", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "HotPath",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Fusebox", package: "fusebox"),
                .product(name: "FuseboxRedis", package: "fusebox"),
                .product(name: "Hiredis", package: "fusebox"),
                .product(name: "FuseboxTestKit", package: "fusebox"),
            ],
            path: "Benchmarks/HotPath",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "hotpath-profile",
            dependencies: [
                .product(name: "Fusebox", package: "fusebox"),
                .product(name: "FuseboxRedis", package: "fusebox"),
                .product(name: "FuseboxTestKit", package: "fusebox"),
            ]
        ),
        .executableTarget(
            name: "fusebox-bench",
            dependencies: [
                .product(name: "Fusebox", package: "fusebox"),
                .product(name: "FuseboxTracing", package: "fusebox"),
                .product(name: "FuseboxRedis", package: "fusebox"),
                .product(name: "Hiredis", package: "fusebox"),
                .product(name: "FuseboxTestKit", package: "fusebox"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)
