#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Binds a new TCP socket to 127.0.0.1 at `port`, or at a port the system chooses for 0 (`listening` makes it listen
/// too), and returns it with that port; the caller closes it. For free ports and the test kit's fake servers.
package func bindLoopback(port: Int = 0, listening: Bool) throws -> (descriptor: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw RedisServerProcess.Failure(description: "socket: \(String(cString: strerror(errno)))") }
    var address = loopbackAddress(port: port)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound, !listening || listen(fd, 64) == 0 else {
        let reason = String(cString: strerror(errno))
        close(fd)
        throw RedisServerProcess.Failure(description: "could not bind a loopback port: \(reason)")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// `127.0.0.1:port` as a socket address.
package func loopbackAddress(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return address
}
