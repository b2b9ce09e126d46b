//! Bytes between a descriptor (stdin, stdout) and the daemon's socket, on a blocking thread
//! with no copies through this process: splice(2) through a pipe, or read/write with a large
//! buffer where a descriptor cannot splice (/dev/null, a file opened for appending).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes moved per call; also the pipe's capacity (four times the default: fewer calls,
/// while many ternctl processes stay well inside the per-user pipe quota).
const STEP: usize = 256 << 10;

/// Copies `from` to `to` until end of file, adding what `to` took to `moved` as it goes (so
/// the count is right even when a peer's close stops the copy midway).
pub fn copy(from: RawFd, to: RawFd, moved: &AtomicU64) -> io::Result<()> {
    match pipe() {
        Ok((pipe_out, pipe_in)) => splice_through(from, to, &pipe_out, &pipe_in, moved),
        Err(_) => read_write(from, to, moved),
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (out, into) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A larger pipe means fewer calls; the default (64 KiB) also works.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(into.as_raw_fd(), libc::F_SETPIPE_SZ, STEP as libc::c_int) };
    Ok((out, into))
}

fn splice_through(
    from: RawFd,
    to: RawFd,
    pipe_out: &OwnedFd,
    pipe_in: &OwnedFd,
    moved: &AtomicU64,
) -> io::Result<()> {
    loop {
        let mut left = match splice(from, pipe_in.as_raw_fd(), STEP, libc::POLLIN) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            // `from` cannot splice (/dev/null, say): nothing is in the pipe yet.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return read_write(from, to, moved);
            }
            Err(e) => return Err(e),
        };
        while left > 0 {
            match splice(pipe_out.as_raw_fd(), to, left, libc::POLLOUT) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                }
                // `to` cannot splice: hand over what is in the pipe, then copy plainly.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    let mut buf = vec![0u8; left];
                    read_exactly(pipe_out.as_raw_fd(), &mut buf)?;
                    write_all(to, &buf, moved)?;
                    return read_write(from, to, moved);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One splice(2) call, retried on EINTR, and waiting (poll for `ready`) on a non-blocking
/// descriptor that has nothing to give or take yet.
fn splice(from: RawFd, to: RawFd, len: usize, ready: libc::c_short) -> io::Result<usize> {
    loop {
        // SAFETY: splice between two open descriptors, no offsets (both are streams).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                // Not SPLICE_F_MORE: it would hold a message's tail back on a TCP stdout.
                0,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => wait(if ready == libc::POLLIN { from } else { to }, ready)?,
            _ => return Err(e),
        }
    }
}

fn read_write(from: RawFd, to: RawFd, moved: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; STEP];
    loop {
        let n = retry(from, libc::POLLIN, || {
            // SAFETY: reads into our buffer, at most its length.
            unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) }
        })?;
        if n == 0 {
            return Ok(());
        }
        write_all(to, &buf[..n], moved)?;
    }
}

fn read_exactly(from: RawFd, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = retry(from, libc::POLLIN, || {
            // SAFETY: reads into the rest of our buffer, at most its length.
            unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) }
        })?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

fn write_all(to: RawFd, mut buf: &[u8], moved: &AtomicU64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = retry(to, libc::POLLOUT, || {
            // SAFETY: writes from our buffer, at most its length.
            unsafe { libc::write(to, buf.as_ptr().cast(), buf.len()) }
        })?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
        buf = &buf[n..];
    }
    Ok(())
}

/// Runs a read or write call until it does not fail with EINTR or EAGAIN.
fn retry(fd: RawFd, ready: libc::c_short, mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => wait(fd, ready)?,
            _ => return Err(e),
        }
    }
}

fn wait(fd: RawFd, events: libc::c_short) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, no timeout.
    match unsafe { libc::poll(&mut poll, 1, -1) } {
        -1 if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) => {
            Err(io::Error::last_os_error())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;

    fn data() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_pipe_into_a_socket_arrives_whole() {
        let (pipe_out, pipe_in) = pipe().expect("pipe");
        let (near, mut far) = UnixStream::pair().expect("socket pair");
        let writer = std::thread::spawn(move || {
            let mut pipe_in = std::fs::File::from(pipe_in);
            pipe_in.write_all(&data()).expect("write");
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            far.read_to_end(&mut got).expect("read");
            got
        });
        let moved = AtomicU64::new(0);
        copy(pipe_out.as_raw_fd(), near.as_raw_fd(), &moved).expect("copy");
        near.shutdown(Shutdown::Write).expect("shutdown");
        writer.join().expect("writer");
        assert_eq!(reader.join().expect("reader"), data());
        assert_eq!(moved.load(Ordering::Relaxed), data().len() as u64);
    }

    #[test]
    fn stdin_from_dev_null_ends_at_once() {
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let (near, mut far) = UnixStream::pair().expect("socket pair");
        let moved = AtomicU64::new(0);
        copy(null.as_raw_fd(), near.as_raw_fd(), &moved).expect("copy");
        drop(near);
        let mut got = Vec::new();
        far.read_to_end(&mut got).expect("read");
        assert!(got.is_empty());
        assert_eq!(moved.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_descriptor_that_cannot_splice_gets_every_byte_plainly() {
        // splice(2) refuses files opened for appending: the bytes already in the pipe are
        // handed over, then the copy goes on with read and write.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("out");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("file");
        let (near, mut far) = UnixStream::pair().expect("socket pair");
        let writer = std::thread::spawn(move || {
            far.write_all(&data()).expect("write");
        });
        let moved = AtomicU64::new(0);
        copy(near.as_raw_fd(), file.as_raw_fd(), &moved).unwrap_or_else(|e| {
            panic!("copy: {e}");
        });
        writer.join().expect("writer");
        assert_eq!(std::fs::read(&path).expect("read back"), data());
        assert_eq!(moved.load(Ordering::Relaxed), data().len() as u64);
    }
}
