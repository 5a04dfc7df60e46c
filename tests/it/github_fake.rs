//! A fake GitHub API on loopback, for the release and cache commands: releases by tag,
//! create and update, assets (listed in pages of at most `page_cap`, uploaded on the same
//! host, deleted, downloaded), Actions caches (paged, deleted). It checks the token, can
//! fail uploads with 502 or a secondary rate limit (403 with `retry-after: 1`), and records
//! every request. Pull requests answer their state, and cache deletes can be refused with 403
//! as GitHub refuses a token without `actions: write`.

use std::{
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use sha2::Digest as _;

/// One recorded request: method and path with its query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub url: String,
    pub authorized: bool,
}

#[derive(Clone, Debug)]
pub struct FakeAsset {
    pub id: u64,
    pub name: String,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct FakeRelease {
    pub id: u64,
    pub tag: String,
    pub name: String,
    pub body: String,
    pub draft: bool,
    pub assets: Vec<FakeAsset>,
}

#[derive(Clone, Debug)]
pub struct FakeCache {
    pub id: i64,
    pub key: String,
    pub git_ref: String,
    pub created_at: String,
    pub size: u64,
}

#[derive(Debug, Default)]
pub struct State {
    pub releases: Vec<FakeRelease>,
    pub caches: Vec<FakeCache>,
    /// Pull requests by number, with their state (`open` or `closed`).
    pub pulls: Vec<(u64, &'static str)>,
    /// Refuse cache deletes with 403, as for a token without `actions: write`.
    pub read_only_actions: bool,
    pub requests: Vec<Seen>,
    /// Answer the next N uploads with 502.
    pub fail_uploads: u32,
    /// Answer the next N uploads with a secondary rate limit.
    pub rate_limit_uploads: u32,
    /// The most items a page holds.
    pub page_cap: usize,
    next_id: u64,
}

pub struct FakeGitHub {
    pub url: String,
    /// The same server under another host name, as uploads.github.com is to api.github.com.
    pub uploads: String,
    pub state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const OWNER_REPO: &str = "/repos/kiln-dev/demo";
const DATE: &str = "2026-11-27T00:00:00Z";

impl FakeGitHub {
    pub fn start(token: &str) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("listen"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let url = format!("http://127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(State { page_cap: 2, next_id: 1, ..State::default() }));
        let thread = {
            let (server, state, url, token) = (server.clone(), state.clone(), url.clone(), token.to_owned());
            std::thread::spawn(move || {
                while let Ok(mut request) = server.recv() {
                    let mut body = Vec::new();
                    let _ = request.as_reader().read_to_end(&mut body);
                    let response = handle(&state, &url, &token, &request, &body);
                    let _ = request.respond(response);
                }
            })
        };
        let uploads = url.replace("127.0.0.1", "localhost");
        Self { url, uploads, state, server, thread: Some(thread) }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().expect("state").requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().expect("state").requests.clear();
    }

    pub fn release(&self, tag: &str) -> Option<FakeRelease> {
        self.state.lock().expect("state").releases.iter().find(|r| r.tag == tag).cloned()
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn json(status: u16, value: serde_json::Value) -> Response {
    tiny_http::Response::from_data(value.to_string().into_bytes())
        .with_status_code(status)
        .with_header(tiny_http::Header::from_bytes("Content-Type", "application/json").expect("header"))
}

fn message(status: u16, text: &str) -> Response {
    json(status, serde_json::json!({ "message": text, "documentation_url": "https://docs.github.com" }))
}

fn release_json(url: &str, release: &FakeRelease) -> serde_json::Value {
    serde_json::json!({
        "url": format!("{url}{OWNER_REPO}/releases/{}", release.id),
        "html_url": format!("{url}/kiln-dev/demo/releases/tag/{}", release.tag),
        "assets_url": format!("{url}{OWNER_REPO}/releases/{}/assets", release.id),
        "upload_url": format!(
            "{}{OWNER_REPO}/releases/{}/assets{{?name,label}}",
            url.replace("127.0.0.1", "localhost"),
            release.id
        ),
        "tarball_url": null,
        "zipball_url": null,
        "id": release.id,
        "node_id": format!("R_{}", release.id),
        "tag_name": release.tag,
        "target_commitish": "main",
        "name": release.name,
        "body": release.body,
        "draft": release.draft,
        "prerelease": false,
        "created_at": DATE,
        "published_at": DATE,
        "author": null,
        "assets": release.assets.iter().map(|a| asset_json(url, release, a)).collect::<Vec<_>>(),
    })
}

fn asset_json(url: &str, release: &FakeRelease, asset: &FakeAsset) -> serde_json::Value {
    let digest: String = sha2::Sha256::digest(&asset.bytes).iter().map(|b| format!("{b:02x}")).collect();
    serde_json::json!({
        "url": format!("{url}{OWNER_REPO}/releases/assets/{}", asset.id),
        "browser_download_url": format!("{url}/download/{}/{}", release.tag, asset.name),
        "id": asset.id,
        "node_id": format!("RA_{}", asset.id),
        "name": asset.name,
        "label": null,
        "state": "uploaded",
        "content_type": "application/octet-stream",
        "size": asset.bytes.len(),
        "digest": format!("sha256:{digest}"),
        "download_count": 0,
        "created_at": DATE,
        "updated_at": DATE,
        "uploader": null,
    })
}

fn query(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.replace("%2F", "/").replace("%2f", "/"))
    })
}

/// One page of `items` and, when more follow, a `Link: rel="next"` to the next page.
fn page<T: Clone>(items: &[T], url: &str, full_url: &str, cap: usize) -> (Vec<T>, Option<String>) {
    let per_page = query(full_url, "per_page").and_then(|p| p.parse().ok()).unwrap_or(30usize).min(cap).max(1);
    let number = query(full_url, "page").and_then(|p| p.parse().ok()).unwrap_or(1usize).max(1);
    let start = (number - 1) * per_page;
    let slice: Vec<T> = items.iter().skip(start).take(per_page).cloned().collect();
    let path = full_url.split('?').next().unwrap_or(full_url);
    let next = (start + per_page < items.len())
        .then(|| format!("<{url}{path}?per_page={per_page}&page={}>; rel=\"next\"", number + 1));
    (slice, next)
}

fn handle(state: &Mutex<State>, url: &str, token: &str, request: &tiny_http::Request, body: &[u8]) -> Response {
    let method = request.method().as_str().to_owned();
    let full = request.url().to_owned();
    let path = full.split('?').next().unwrap_or(&full).to_owned();
    let credentials = request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.to_string());
    let authorized =
        credentials.as_deref().is_some_and(|c| c == format!("Bearer {token}") || c == format!("token {token}"));
    let mut state = state.lock().expect("state");
    state.requests.push(Seen { method: method.clone(), url: full.clone(), authorized });
    if let Some(rest) = path.strip_prefix("/download/") {
        let Some((tag, name)) = rest.split_once('/') else { return message(404, "Not Found") };
        let found = state.releases.iter().find(|r| r.tag == tag).and_then(|r| r.assets.iter().find(|a| a.name == name));
        return match found {
            Some(asset) => tiny_http::Response::from_data(asset.bytes.clone()),
            None => message(404, "Not Found"),
        };
    }
    // As on github.com: wrong credentials are refused; none may read a public repository's
    // releases, and nothing else.
    let public_read = method == "GET" && path.contains("/releases");
    if credentials.is_some() && !authorized || credentials.is_none() && !public_read {
        return message(401, if credentials.is_some() { "Bad credentials" } else { "Requires authentication" });
    }
    let Some(route) = path.strip_prefix(OWNER_REPO) else { return message(404, "Not Found") };
    let parts: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    let cap = state.page_cap;
    match (method.as_str(), parts.as_slice()) {
        // As on github.com, a draft is not found by its tag, only in the list.
        ("GET", ["releases", "tags", tag]) => match state.releases.iter().find(|r| r.tag == *tag && !r.draft) {
            Some(release) => json(200, release_json(url, release)),
            None => message(404, "Not Found"),
        },
        ("GET", ["releases"]) => {
            let (items, next) = page(&state.releases, url, &full, cap);
            let list: Vec<_> = items.iter().map(|r| release_json(url, r)).collect();
            let mut response = json(200, serde_json::Value::Array(list));
            if let Some(next) = next {
                response = response.with_header(tiny_http::Header::from_bytes("Link", next).expect("header"));
            }
            response
        }
        ("POST", ["releases"]) => {
            let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let tag = request["tag_name"].as_str().unwrap_or_default().to_owned();
            if state.releases.iter().any(|r| r.tag == tag) {
                return message(422, "Validation Failed: tag_name already_exists");
            }
            let id = state.next_id;
            state.next_id += 1;
            let release = FakeRelease {
                id,
                tag,
                name: request["name"].as_str().unwrap_or_default().to_owned(),
                body: request["body"].as_str().unwrap_or_default().to_owned(),
                draft: request["draft"].as_bool().unwrap_or(false),
                assets: Vec::new(),
            };
            let answer = release_json(url, &release);
            state.releases.push(release);
            json(201, answer)
        }
        ("GET" | "PATCH", ["releases", id]) => {
            let Some(release) = state.releases.iter_mut().find(|r| r.id.to_string() == *id) else {
                return message(404, "Not Found");
            };
            if method == "PATCH" {
                let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                if let Some(name) = request["name"].as_str() {
                    release.name = name.to_owned();
                }
                if let Some(text) = request["body"].as_str() {
                    release.body = text.to_owned();
                }
                if let Some(draft) = request["draft"].as_bool() {
                    release.draft = draft;
                }
            }
            json(200, release_json(url, release))
        }
        ("GET", ["releases", id, "assets"]) => {
            let Some(release) = state.releases.iter().find(|r| r.id.to_string() == *id) else {
                return message(404, "Not Found");
            };
            let (items, next) = page(&release.assets, url, &full, cap);
            let list: Vec<_> = items.iter().map(|a| asset_json(url, release, a)).collect();
            let mut response = json(200, serde_json::Value::Array(list));
            if let Some(next) = next {
                response = response.with_header(tiny_http::Header::from_bytes("Link", next).expect("header"));
            }
            response
        }
        ("POST", ["releases", id, "assets"]) => {
            if state.fail_uploads > 0 {
                state.fail_uploads -= 1;
                return message(502, "Bad Gateway");
            }
            if state.rate_limit_uploads > 0 {
                state.rate_limit_uploads -= 1;
                return message(403, "You have exceeded a secondary rate limit. Please wait a few minutes.")
                    .with_header(tiny_http::Header::from_bytes("retry-after", "1").expect("header"));
            }
            let name = query(&full, "name").unwrap_or_default();
            let asset_id = state.next_id;
            state.next_id += 1;
            let Some(release) = state.releases.iter_mut().find(|r| r.id.to_string() == *id) else {
                return message(404, "Not Found");
            };
            // Immutable releases: once published, its assets are fixed.
            if !release.draft {
                return message(422, "Validation Failed: Cannot upload assets to an immutable release.");
            }
            if release.assets.iter().any(|a| a.name == name) {
                return message(422, "Validation Failed: name already_exists");
            }
            let asset = FakeAsset { id: asset_id, name, bytes: body.to_vec() };
            let answer = asset_json(url, release, &asset);
            release.assets.push(asset);
            json(201, answer)
        }
        ("DELETE", ["releases", "assets", id]) => {
            for release in &mut state.releases {
                if let Some(at) = release.assets.iter().position(|a| a.id.to_string() == *id) {
                    if !release.draft {
                        return message(422, "Validation Failed: Cannot delete assets of an immutable release.");
                    }
                    release.assets.remove(at);
                    return tiny_http::Response::from_data(Vec::new()).with_status_code(204);
                }
            }
            message(404, "Not Found")
        }
        ("GET", ["actions", "caches"]) => {
            let prefix = query(&full, "key").unwrap_or_default();
            let git_ref = query(&full, "ref");
            let matching: Vec<FakeCache> = state
                .caches
                .iter()
                .filter(|c| c.key.starts_with(&prefix) && git_ref.as_ref().is_none_or(|r| *r == c.git_ref))
                .cloned()
                .collect();
            let (items, _) = page(&matching, url, &full, cap);
            let caches: Vec<_> = items
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "id": c.id, "ref": c.git_ref, "key": c.key, "version": "v",
                        "last_accessed_at": c.created_at, "created_at": c.created_at, "size_in_bytes": c.size,
                    })
                })
                .collect();
            json(200, serde_json::json!({ "total_count": matching.len(), "actions_caches": caches }))
        }
        ("DELETE", ["actions", "caches", _]) if state.read_only_actions => {
            message(403, "Resource not accessible by integration").with_header(
                tiny_http::Header::from_bytes("X-Accepted-GitHub-Permissions", "actions=write").expect("header"),
            )
        }
        ("GET", ["pulls", number]) => match state.pulls.iter().find(|(n, _)| n.to_string() == *number) {
            Some((number, pull_state)) => json(
                200,
                serde_json::json!({
                    "url": format!("{url}{OWNER_REPO}/pulls/{number}"),
                    "id": 1000 + number,
                    "number": number,
                    "state": pull_state,
                    "title": format!("change {number}"),
                    "merged_at": null,
                }),
            ),
            None => message(404, "Not Found"),
        },
        ("DELETE", ["actions", "caches", id]) => match state.caches.iter().position(|c| c.id.to_string() == *id) {
            Some(at) => {
                state.caches.remove(at);
                tiny_http::Response::from_data(Vec::new()).with_status_code(204)
            }
            None => message(404, "Not Found"),
        },
        _ => message(404, "Not Found"),
    }
}
