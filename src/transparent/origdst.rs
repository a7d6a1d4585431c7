//! The original destination of a connection that iptables redirected to sluice.
//!
//! Owns: the one `getsockopt` that asks netfilter's connection tracking where a `REDIRECT`ed
//! connection was going: `SO_ORIGINAL_DST` at `SOL_IP` for IPv4 (also for IPv4 clients of a
//! dual-stack `[::]` listener, whose peers are v4-mapped), `IP6T_SO_ORIGINAL_DST` at
//! `SOL_IPV6` for IPv6.
//!
//! Invariants: never blocks (a socket option read on an accepted fd, answered from the
//! conntrack entry in memory); a connection that was not redirected (a client addressing the
//! listener directly) yields `None`, never the listener's own address, so the proxy cannot
//! connect to itself.
//!
//! Why libc and not socket2: socket2 exposes `original_dst` only for IPv4 in the version
//! pinned here, and a dual-stack listener needs both levels.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// The original destination of the accepted connection `fd` whose local address is `local`.
/// `Ok(None)`: the connection was not redirected.
pub fn original_dst(fd: RawFd, local: SocketAddr) -> io::Result<Option<SocketAddr>> {
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let dst = if v4 { get_v4(fd)? } else { get_v6(fd)? };
    Ok(not_local(dst, local))
}

/// `None` when `dst` is the listener's own address (no redirect took place).
fn not_local(dst: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
    let canon = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), v6.port()),
            None => a,
        },
        a => a,
    };
    (canon(dst) != canon(local)).then_some(canon(dst))
}

fn get_v4(fd: RawFd) -> io::Result<SocketAddr> {
    let mut sa = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` is a writable sockaddr_in of `len` bytes; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            sa.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and (partly) written by the kernel: every bit pattern is valid.
    let sa = unsafe { sa.assume_init() };
    if i32::from(sa.sin_family) != libc::AF_INET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned a non-IPv4 address",
        ));
    }
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(sa.sin_port),
    )))
}

fn get_v6(fd: RawFd) -> io::Result<SocketAddr> {
    let mut sa = MaybeUninit::<libc::sockaddr_in6>::zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: as in `get_v4`, for a sockaddr_in6.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            libc::IP6T_SO_ORIGINAL_DST,
            sa.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see `get_v4`.
    let sa = unsafe { sa.assume_init() };
    if i32::from(sa.sin6_family) != libc::AF_INET6 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "IP6T_SO_ORIGINAL_DST returned a non-IPv6 address",
        ));
    }
    let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
    Ok(SocketAddr::V6(SocketAddrV6::new(
        ip,
        u16::from_be(sa.sin6_port),
        sa.sin6_flowinfo,
        sa.sin6_scope_id,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn listener_address_means_not_redirected() {
        let l: SocketAddr = "10.0.0.1:15001".parse().unwrap();
        assert_eq!(not_local(l, l), None);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:15001".parse().unwrap();
        assert_eq!(not_local(l, mapped), None);
        let d: SocketAddr = "[::ffff:10.0.0.9]:80".parse().unwrap();
        assert_eq!(not_local(d, mapped), Some("10.0.0.9:80".parse().unwrap()));
    }

    #[test]
    fn a_direct_connection_has_no_original_destination() {
        // Without conntrack NAT the kernel either answers with the local address or ENOENT;
        // both must come out as "no original destination" or an error, never another address.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(a).unwrap();
        let (s, _) = l.accept().unwrap();
        if let Ok(d) = original_dst(s.as_raw_fd(), s.local_addr().unwrap()) {
            assert_eq!(d, None)
        }
    }
}
