//! An HTTP CONNECT proxy on 127.0.0.1 for the proxy tests: it records every CONNECT target
//! and the `Proxy-Authorization` it came with, can require credentials (407 without
//! them), and tunnels to the target's port on 127.0.0.1 whatever the target's name (it is
//! the proxy that "resolves" names, as a real one would; nothing is looked up).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Seen {
    connects: Vec<String>,
    auths: Vec<Option<String>>,
    other: Vec<String>,
}

/// The proxy; stops when dropped.
pub struct ConnectProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ConnectProxy {
    /// Start; with `required_auth` (the whole header value, e.g. `Basic dXNlcjpwYXNz`) it
    /// answers 407 to a CONNECT without exactly that `Proxy-Authorization`.
    pub async fn start(required_auth: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let required = required_auth.map(str::to_string);
        let server = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(client, seen.clone(), required.clone()));
                }
            }
        });
        Self { addr, seen, server }
    }

    /// `http://127.0.0.1:<port>`, what `HTTPS_PROXY` is set to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The CONNECT targets (`host:port`) so far, in order.
    pub fn connects(&self) -> Vec<String> {
        self.seen.lock().unwrap().connects.clone()
    }

    /// The `Proxy-Authorization` of each CONNECT.
    pub fn auths(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().auths.clone()
    }

    /// Request lines that were not CONNECT.
    pub fn other_requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().other.clone()
    }
}

async fn serve(mut client: TcpStream, seen: Arc<Mutex<Seen>>, required: Option<String>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_string());
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "CONNECT" {
        seen.lock().unwrap().other.push(request_line.clone());
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    {
        let mut s = seen.lock().unwrap();
        s.connects.push(target.to_string());
        s.auths.push(auth.clone());
    }
    if required.is_some() && auth != required {
        let _ = client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    let Some(port) = target
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
    else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        return;
    };
    // Every name is this machine: the tunnel goes to 127.0.0.1 on the target's port.
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", port)).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
