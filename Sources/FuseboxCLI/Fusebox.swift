import ArgumentParser

/// The `fusebox` command: inspect and steer shared circuit breakers, and run the demo.
@main
struct FuseboxCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fusebox",
        abstract: "Shared-state circuit breakers: inspect, steer, demo.",
        subcommands: [DemoCommand.self]
    )
}
