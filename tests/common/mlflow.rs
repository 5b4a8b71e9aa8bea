//! A real MLflow tracking server for tests: started from the project's `.venv/mlflow`
//! (`scripts/mlflow-venv` installs it; `scripts/test` does that first) on 127.0.0.1, a free
//! port, a SQLite store and proxied artifacts; stopped by its PID. A watchdog stops it too
//! when the test process ends without dropping it (the shared server).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The MLflow program the tests start.
pub fn program() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/mlflow/bin/mlflow");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/mlflow-venv (scripts/test runs it before the tests)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (free when asked; nothing holds it after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `mlflow server`.
pub struct Server {
    pub uri: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts a server keeping its database and artifacts in `dir`, and waits until it answers.
    pub fn start(dir: &Path, port: u16) -> Server {
        let started = Instant::now();
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(program())
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mlflow server starts");
        // Stops the server when this test process is gone, however it ended; it outlives us
        // by design, so nobody waits for it.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args([
                "-c",
                "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -TERM \"$2\" 2>/dev/null",
                "watchdog",
                &std::process::id().to_string(),
                &child.id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Server {
            uri: format!("http://127.0.0.1:{port}"),
            port,
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        server.wait_ready();
        eprintln!(
            "mlflow server on port {port} answered after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        server
    }

    fn wait_ready(&mut self) {
        let http = reqwest::blocking::Client::new();
        let started = Instant::now();
        loop {
            let health = http
                .get(format!("{}/health", self.uri))
                .timeout(Duration::from_secs(2))
                .send();
            if health.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || started.elapsed() > Duration::from_secs(180) {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                panic!(
                    "mlflow server did not answer ({exited:?}); its log, last lines first:\n{tail}"
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the server by its PID (SIGTERM, as MLflow wants) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One server shared by the tests of a test binary (each test uses its own experiment).
pub fn shared() -> &'static str {
    static SERVER: OnceLock<Server> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap().keep();
            Server::start(&dir, free_port())
        })
        .uri
}

/// Reads a server back through the REST API, independently of xferlab's client.
pub struct Api {
    base: String,
    http: reqwest::blocking::Client,
}

impl Api {
    pub fn new(uri: &str) -> Api {
        Api {
            base: format!("{uri}/api/2.0/mlflow"),
            http: reqwest::blocking::Client::new(),
        }
    }

    pub fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(format!("{}/{endpoint}", self.base))
            .query(query)
            .send()
            .unwrap();
        assert!(
            response.status().is_success(),
            "{endpoint}: {}",
            response.status()
        );
        response.json().unwrap()
    }

    pub fn post(&self, endpoint: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/{endpoint}", self.base))
            .json(&body)
            .send()
            .unwrap();
        assert!(
            response.status().is_success(),
            "{endpoint}: {}",
            response.status()
        );
        response.json().unwrap()
    }

    pub fn experiment_id(&self, name: &str) -> String {
        self.get("experiments/get-by-name", &[("experiment_name", name)])["experiment"]
            ["experiment_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Every active run of an experiment.
    pub fn runs(&self, experiment: &str) -> Vec<Run> {
        let id = self.experiment_id(experiment);
        let mut runs = Vec::new();
        let mut token = None::<String>;
        loop {
            let mut body = json!({"experiment_ids": [id], "max_results": 500});
            if let Some(token) = &token {
                body["page_token"] = json!(token);
            }
            let reply = self.post("runs/search", body);
            runs.extend(
                reply["runs"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(Run),
            );
            match reply["next_page_token"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => return runs,
            }
        }
    }

    /// (step, value) of a metric's whole history.
    pub fn history(&self, run: &str, key: &str) -> Vec<(u64, f64)> {
        let reply = self.get(
            "metrics/get-history",
            &[("run_id", run), ("metric_key", key)],
        );
        let mut points: Vec<(u64, f64)> = reply["metrics"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap()))
            .collect();
        points.sort_by(|a, b| a.partial_cmp(b).unwrap());
        points
    }

    /// Paths of a run's artifacts (top level).
    pub fn artifacts(&self, run: &str) -> Vec<String> {
        let reply = self.get("artifacts/list", &[("run_id", run)]);
        let mut paths: Vec<String> = reply["files"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect();
        paths.sort();
        paths
    }

    /// A run's artifact, downloaded through the server's proxy.
    pub fn artifact(&self, run: &Run, path: &str) -> String {
        let location = run.info("artifact_uri");
        let location = location.strip_prefix("mlflow-artifacts:/").unwrap();
        let url = self
            .base
            .replace("/api/2.0/mlflow", "/api/2.0/mlflow-artifacts/artifacts");
        self.http
            .get(format!("{url}/{location}/{path}"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }
}

/// A run as `runs/search` returns it.
#[derive(Debug, Clone)]
pub struct Run(pub Value);

impl Run {
    pub fn id(&self) -> String {
        self.info("run_id")
    }

    pub fn info(&self, key: &str) -> String {
        self.0["info"][key].as_str().unwrap_or_default().to_string()
    }

    fn data(&self, kind: &str, key: &str) -> Option<String> {
        self.0["data"][kind]
            .as_array()?
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| match &t["value"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    }

    pub fn tag(&self, key: &str) -> Option<String> {
        self.data("tags", key)
    }

    pub fn param(&self, key: &str) -> Option<String> {
        self.data("params", key)
    }

    pub fn metric(&self, key: &str) -> Option<f64> {
        self.data("metrics", key).map(|v| v.parse().unwrap())
    }

    pub fn is_child(&self) -> bool {
        self.tag("mlflow.parentRunId").is_some()
    }
}
