//! Hugging Face: the hub cache layout with revision pins, local directories of configs and splits,
//! downloads from a loopback hub (pagination, tokens never shown), where the token is found.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::json;
use shaping::sources::*;
use tempfile::TempDir;

use super::parquet_files::write_flat_parquet;
use super::{all, write};

/// Loopback server routes: path (with query) -> (status, headers, body).
type Routes = HashMap<String, (u16, Vec<(String, String)>, Vec<u8>)>;

/// Requests seen by the loopback server: (path, Authorization header).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[test]
fn hf_cache_layout_with_revision_pin() {
    let dir = TempDir::new().unwrap();
    let cache = HfCache::new(dir.path());
    let repo = dir.path().join("datasets--org--prompts");
    write(&repo, "refs/main", format!("{COMMIT_B}\n"));
    write(
        &repo,
        &format!("snapshots/{COMMIT_A}/data/train-00000-of-00001.jsonl"),
        "{\"prompt\": \"old\"}\n",
    );
    write(
        &repo,
        &format!("snapshots/{COMMIT_B}/data/train-00000-of-00002.jsonl"),
        "{\"prompt\": \"new 1\"}\n",
    );
    write(
        &repo,
        &format!("snapshots/{COMMIT_B}/data/train-00001-of-00002.jsonl"),
        "{\"prompt\": \"new 2\"}\n",
    );
    write(
        &repo,
        &format!("snapshots/{COMMIT_B}/data/test-00000-of-00001.jsonl"),
        "{\"prompt\": \"test\"}\n",
    );
    write(&repo, &format!("snapshots/{COMMIT_B}/README.md"), "# card");

    let ds = HfDataset::new("org/prompts");
    let files = ds.cached(&cache).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0].ends_with("data/train-00000-of-00002.jsonl"));
    let recs = all(ds.loader(files).open().unwrap());
    assert_eq!(
        recs.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(),
        ["new 1", "new 2"]
    );
    assert_eq!(recs[0].source, "prompts");

    let pinned = ds.clone().revision(COMMIT_A).cached(&cache).unwrap();
    assert_eq!(
        all(Loader::from_files(pinned).open().unwrap())[0].prompt,
        "old"
    );
    let test = ds.clone().split("test").cached(&cache).unwrap();
    assert_eq!(test.len(), 1);

    let err = ds
        .clone()
        .revision("v2")
        .cached(&cache)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("revision `v2` is not in the cache")
            && err.contains(&format!("cached snapshots: {COMMIT_A}, {COMMIT_B}")),
        "{err}"
    );
    let err = ds
        .clone()
        .split("validation")
        .cached(&cache)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no .parquet/.jsonl/.csv shards for split `validation`")
            && err.contains("README.md"),
        "{err}"
    );
}

#[test]
fn hf_local_dir_with_config_layout() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "default/train/0000.parquet", "x");
    write(dir.path(), "default/train/0001.parquet", "x");
    write(dir.path(), "default/test/0000.parquet", "x");
    write(dir.path(), "other/train/0000.parquet", "x");
    let files = HfDataset::new("org/ds")
        .config("default")
        .shards_in(dir.path())
        .unwrap();
    let rels: Vec<_> = files
        .iter()
        .map(|f| {
            f.strip_prefix(dir.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        rels,
        ["default/train/0000.parquet", "default/train/0001.parquet"]
    );
    let err = HfDataset::new("org/ds")
        .config("nope")
        .shards_in(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no directory for config `nope`"), "{err}");
}

/// A tiny HTTP/1.1 server on 127.0.0.1: fixed routes, records every request's path and
/// Authorization header, answers `Connection: close`. `{base}` in header values becomes the
/// server's own `http://addr`.
async fn serve(routes: Routes) -> (String, Seen) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .unwrap_or("")
                    .split(' ')
                    .nth(1)
                    .unwrap_or("")
                    .to_owned();
                let auth = lines
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    })
                    .map(|(_, v)| v.trim().to_owned());
                log.lock().unwrap().push((path.clone(), auth));
                let (status, headers, body) = routes.get(&path).cloned().unwrap_or((
                    404,
                    vec![],
                    b"{\"error\":\"not found\"}".to_vec(),
                ));
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    let v = v.replace("{base}", &format!("http://{addr}"));
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn hf_download_via_loopback_server() {
    let dir = TempDir::new().unwrap();
    let shard_src = dir.path().join("src.parquet");
    write_flat_parquet(
        &shard_src,
        &["prompt"],
        &[vec![Some("downloaded prompt")], vec![Some("another one")]],
        1,
    );
    let shard = std::fs::read(&shard_src).unwrap();
    let ok = |body: Vec<u8>| {
        (
            200u16,
            vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body,
        )
    };
    let mut routes = HashMap::new();
    routes.insert(
        "/api/datasets/org/wild/revision/main".to_owned(),
        ok(format!("{{\"sha\": \"{COMMIT_A}\", \"siblings\": []}}").into_bytes()),
    );
    let tree = format!("/api/datasets/org/wild/tree/{COMMIT_A}?recursive=true");
    let (status, mut headers, body) = ok(json!([
        {"type": "directory", "path": "data", "oid": "x", "size": 0},
        {"type": "file", "path": "README.md", "oid": "x", "size": 10},
        {"type": "file", "path": "data/train-00000-of-00002.parquet", "oid": "x", "size": shard.len()}
    ])
    .to_string()
    .into_bytes());
    headers.push((
        "Link".into(),
        format!("<{{base}}{tree}&cursor=2>; rel=\"next\""),
    ));
    routes.insert(tree.clone(), (status, headers, body));
    routes.insert(
        format!("{tree}&cursor=2"),
        ok(json!([{"type": "file", "path": "data/train-00001-of-00002.parquet", "size": shard.len()},
                  {"type": "file", "path": "data/test-00000-of-00001.parquet", "size": 1}])
        .to_string()
        .into_bytes()),
    );
    for i in 0..2 {
        routes.insert(
            format!("/datasets/org/wild/resolve/{COMMIT_A}/data/train-0000{i}-of-00002.parquet"),
            (200, vec![], shard.clone()),
        );
    }
    let (endpoint, seen) = serve(routes).await;

    let cache = HfCache::new(dir.path().join("hub"));
    let token = "hf_secretTOKEN123";
    let hub = HfHub::new(&endpoint).with_token(Some(token.into()));
    assert!(!format!("{hub:?}").contains(token));
    let ds = HfDataset::new("org/wild");
    assert!(ds.cached(&cache).is_err());
    let files = ds.fetch(&cache, Some(&hub)).await.unwrap();
    assert_eq!(files.len(), 2);
    let snap = dir
        .path()
        .join(format!("hub/datasets--org--wild/snapshots/{COMMIT_A}"));
    assert_eq!(files[0], snap.join("data/train-00000-of-00002.parquet"));
    assert_eq!(std::fs::read(&files[1]).unwrap(), shard);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hub/datasets--org--wild/refs/main")).unwrap(),
        COMMIT_A
    );
    let leftovers: Vec<_> = std::fs::read_dir(snap.join("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left behind");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert!(
            seen.iter()
                .all(|(_, auth)| auth.as_deref() == Some(&format!("Bearer {token}") as &str)),
            "{seen:?}"
        );
    }
    // Now cached: works offline, and loads.
    let cached = ds.cached(&cache).unwrap();
    assert_eq!(cached, files);
    let recs = all(ds.loader(cached).open().unwrap());
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0].prompt, "downloaded prompt");
    // A second download fetches nothing again.
    ds.download(&hub, &cache).await.unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        5 + 3,
        "only revision + 2 tree pages"
    );

    // Errors name the URL and status, never the token.
    let err = HfDataset::new("org/missing")
        .download(&hub, &cache)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/api/datasets/org/missing/revision/main") && err.contains("404"),
        "{err}"
    );
    assert!(!err.contains(token), "{err}");
    let no_token = HfHub::new(&endpoint);
    HfDataset::new("org/wild")
        .download(&no_token, &HfCache::new(dir.path().join("hub2")))
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().last().unwrap().1,
        None,
        "no Authorization without a token"
    );
    let err = HfDataset::new("org/wild")
        .download(
            &HfHub::new("http://127.0.0.1:1").with_token(Some(token.into())),
            &cache,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains(token), "{err}");
}

/// The Hugging Face token: `HF_TOKEN`, else the `HF_TOKEN_PATH` file, else `huggingface-cli
/// login`'s file `$HF_HOME/token` (default `~/.cache/huggingface/token`), trimmed.
#[test]
fn hf_token_is_found_where_the_hugging_face_tools_put_it() {
    use shaping::sources::hf_token;
    use std::collections::HashMap;
    use std::ffi::OsString;
    let dir = TempDir::new().unwrap();
    let home = dir.path().join("home");
    let login_file = home.join(".cache/huggingface/token");
    std::fs::create_dir_all(login_file.parent().unwrap()).unwrap();
    std::fs::write(&login_file, "hf_from_login\n").unwrap();
    let hf_home = dir.path().join("hf-home");
    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), "  hf_from_hf_home \n").unwrap();
    let token_path = dir.path().join("token-file");
    std::fs::write(&token_path, "hf_from_token_path\n").unwrap();

    let lookup = |vars: &[(&str, &Path)]| {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_os_str().to_owned()))
            .collect();
        hf_token(move |name| vars.get(name).cloned())
    };
    let home_only = [("HOME", home.as_path())];
    assert_eq!(lookup(&home_only).as_deref(), Some("hf_from_login"));
    let with_hf_home = [("HOME", home.as_path()), ("HF_HOME", hf_home.as_path())];
    assert_eq!(lookup(&with_hf_home).as_deref(), Some("hf_from_hf_home"));
    let with_path = [
        ("HOME", home.as_path()),
        ("HF_HOME", hf_home.as_path()),
        ("HF_TOKEN_PATH", token_path.as_path()),
    ];
    assert_eq!(lookup(&with_path).as_deref(), Some("hf_from_token_path"));
    let with_env = [
        ("HOME", home.as_path()),
        ("HF_TOKEN_PATH", token_path.as_path()),
        ("HF_TOKEN", Path::new("hf_from_env")),
    ];
    assert_eq!(lookup(&with_env).as_deref(), Some("hf_from_env"));
    let empty_env = [("HOME", home.as_path()), ("HF_TOKEN", Path::new(""))];
    assert_eq!(lookup(&empty_env).as_deref(), Some("hf_from_login"));
    let nowhere = [("HOME", dir.path())];
    assert_eq!(lookup(&nowhere), None);
}
