//! Real servers on loopback for the remote-store tests: moto's S3 server (PyPI's
//! `moto[server]`, installed by `.ci/setup`) and nginx with WebDAV PUT (Debian's `nginx-light`).
//! Each runs in a temp directory and is killed when dropped.

use std::{
    io::{BufRead as _, BufReader},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where `.ci/setup` installs moto.
fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_TEST_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let installed = home.join(".cache/kiln-ci/moto/bin/moto_server");
    assert!(installed.exists(), "moto's S3 server is not installed at {}: run `.ci/setup`", installed.display());
    installed
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before it listened on port {port}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on port {port} within 30s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// moto's S3 server, with one bucket, recording every request.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("kiln-moto-").tempdir().expect("tempdir");
        let port = free_port();
        let mut child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        wait_for_port(port, &mut child, "moto_server");
        let moto = Self { child, endpoint: format!("http://127.0.0.1:{port}"), _dir: dir };
        moto.request("PUT", &format!("/{bucket}"));
        moto
    }

    /// One HTTP/1.0 request without a body (so the answer is never chunked); returns the body.
    fn request(&self, method: &str, path: &str) -> String {
        use std::io::{Read as _, Write as _};
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).expect("connect to moto");
        write!(stream, "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n\r\n").expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read moto's answer");
        let status = answer.lines().next().unwrap_or_default().to_owned();
        assert!(status.contains(" 200 "), "{method} {path}: {status}");
        answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
    }

    /// Starts recording requests afresh.
    pub fn start_recording(&self) {
        self.request("POST", "/moto-api/recorder/reset-recording");
        self.request("POST", "/moto-api/recorder/start-recording");
    }

    /// The methods and paths of the requests since [`Moto::start_recording`].
    pub fn recorded(&self) -> Vec<(String, String)> {
        let text = self.request("GET", "/moto-api/recorder/download-recording");
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|request| {
                let method = request["method"].as_str().unwrap_or_default().to_owned();
                let url = request["url"].as_str().unwrap_or_default().to_owned();
                (method, url)
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx serving a directory with WebDAV PUT, logging one line per request.
pub struct Nginx {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The directory it serves.
    pub root: PathBuf,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on a free port.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("kiln-nginx-").tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["root", "logs", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let port = free_port();
        // As root, nginx's workers would run as `nobody` and could not write here.
        let user = if nix_is_root() { "user root;\n" } else { "" };
        let conf = format!(
            "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  log_format methods '$request_method $uri $status';\n  access_log {d}/logs/access.log methods;\n\
             client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy; fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
             server {{\n  listen 127.0.0.1:{port};\n  root {d}/root;\n  client_max_body_size 0;\n\
             location / {{ dav_methods PUT DELETE MKCOL; create_full_put_path on; dav_access user:rw group:r all:r; }}\n}}\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).expect("write nginx.conf");
        let mut nginx = Self { child: None, url: format!("http://127.0.0.1:{port}"), root: d.join("root"), dir };
        nginx.run(port);
        nginx
    }

    fn run(&mut self, port: u16) {
        let d = self.dir.path();
        let mut child = Command::new(nginx_binary())
            .args(["-p", &d.display().to_string(), "-c", &d.join("nginx.conf").display().to_string()])
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        wait_for_port(port, &mut child, "nginx");
        self.child = Some(child);
    }

    /// Stops the server (the directory stays). SIGTERM, not SIGKILL: the master then stops
    /// its worker too, which would otherwise go on serving.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
            if let Some(stderr) = child.stderr.take() {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("nginx: {line}");
                }
            }
        }
    }

    /// The requests served so far, as `METHOD PATH STATUS`.
    ///
    /// nginx writes a request's log line after the response has gone out, so a client can see
    /// its answer before the line exists: read until two reads 200 ms apart agree.
    pub fn requests(&self) -> Vec<String> {
        let read = || -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("logs/access.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let mut seen = read();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = read();
            if now == seen {
                return now;
            }
            seen = now;
        }
    }

    /// Files below the served directory whose path contains `part`.
    pub fn files(&self, part: &str) -> Vec<PathBuf> {
        walk(&self.root).into_iter().filter(|p| p.display().to_string().contains(part)).collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed: run `.ci/setup` (Debian's nginx-light)")
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Every file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}
