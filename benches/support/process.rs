//! What `/proc` and the kernel say of a process, and the server child
//! processes the benchmarks start.

// Signals to its own children and the open files limit go through libc,
// each call beside the `SAFETY:` comment that justifies it.
#![allow(unsafe_code)]

use std::{
    fs,
    io::{self},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::SPARE_FDS;

/// A server child process, killed when dropped.
pub struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    pub fn spawn(command: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let file = fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Server {
            child,
            log: log.to_owned(),
        })
    }

    /// Asks the process to stop (SIGTERM) and waits for it, killing it
    /// after `grace`.
    pub fn terminate(mut self, grace: Duration) -> anyhow::Result<()> {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the server did not stop within {grace:?} of SIGTERM")
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Fails with the end of its log when the process exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        let pid = self.pid();
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if state.is_empty() || zombie {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the server exited:\n{}", tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: impl std::fmt::Display) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("no VmRSS")?;
    Ok(rss.trim().trim_end_matches("kB").trim().parse()?)
}

/// The CPU time a process (`self` for this one) has run, to the
/// nanosecond: its CPU-time clock (`clock_getcpuclockid`), where
/// `/proc/<pid>/stat` counts 10 ms ticks.
pub fn cpu_time(pid: impl std::fmt::Display) -> anyhow::Result<Duration> {
    let pid = pid.to_string();
    let clock = if pid == "self" {
        libc::CLOCK_PROCESS_CPUTIME_ID
    } else {
        let mut clock = 0;
        // SAFETY: `clock` is a valid place for the clock id.
        let error = unsafe { libc::clock_getcpuclockid(pid.parse()?, &mut clock) };
        if error != 0 {
            bail!(
                "no CPU-time clock for process {pid}: {}",
                io::Error::from_raw_os_error(error)
            );
        }
        clock
    };
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid place for the time read.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        bail!(
            "cannot read the CPU time of process {pid}: {}",
            io::Error::last_os_error()
        );
    }
    Ok(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn open_files_limit() -> anyhow::Result<usize> {
    let limits = fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no open files limit")?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .context("malformed open files limit")?;
    Ok(soft.parse().unwrap_or(usize::MAX))
}

/// Waits until the previous run's sockets are closed, so the next one has
/// the whole descriptor budget.
pub async fn wait_for_fds_to_close() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let open = fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
        if open < SPARE_FDS {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Raises this process's open-file limit (soft and, as root with
/// CAP_SYS_RESOURCE, hard) toward `wanted`, within the kernel's
/// `fs.nr_open`; children started afterwards inherit it. Returns the soft
/// limit now in force, and why it stays below `wanted` when it does.
pub fn raise_open_files_limit(wanted: u64) -> anyhow::Result<(u64, Option<String>)> {
    let nr_open: u64 = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1 << 20);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit");
    }
    let target = wanted.min(nr_open);
    let capped = (target < wanted).then(|| format!("fs.nr_open is {nr_open}"));
    if limit.rlim_cur >= target {
        return Ok((limit.rlim_cur, capped));
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max.max(target),
    };
    // SAFETY: setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok((target, capped));
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE, which a container's
    // root may lack: the soft limit goes up to the hard one.
    let refused = io::Error::last_os_error();
    let soft_only = libc::rlimit {
        rlim_cur: limit.rlim_max.min(target),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft_only) } != 0 {
        return Err(io::Error::last_os_error()).context("setrlimit");
    }
    Ok((
        soft_only.rlim_cur,
        Some(format!(
            "raising the hard limit {} was refused ({refused})",
            limit.rlim_max
        )),
    ))
}
