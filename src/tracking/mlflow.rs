//! A small MLflow tracking client over the REST API (`/api/2.0/mlflow/`), blocking, with
//! retries on connection errors and 5xx. Credentials come from MLflow's conventional
//! variables and are never part of a message.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

mod auth;
mod wire;

pub use auth::{Auth, redact};
pub use wire::{Metric, Run, RunInfo};
use wire::{RawRun, key_values, metric_json, server_message, string_at};

/// Limits of one `runs/log-batch` call (MLflow documents them; the server enforces them).
const MAX_PARAMS: usize = 100;
const MAX_TAGS: usize = 100;
const MAX_METRICS: usize = 1000;

/// Waits before each retry of a request that could not reach the server or got a 5xx.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// Why a client for a tracking server cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not an `http://` or `https://` one.
    #[error("`{uri}` is not an http:// or https:// address of an MLflow server")]
    NotHttp {
        /// The address, without credentials.
        uri: String,
    },
    /// The HTTP client could not start.
    #[error("cannot start an HTTP client: {reason}")]
    Http {
        /// What the HTTP library reported.
        reason: String,
    },
}

/// Why a tracking call failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// No answer (refused, timed out, 5xx) even after retrying.
    #[error("MLflow server at {uri} did not answer {what}: {reason}")]
    Unreachable {
        /// The server, without credentials.
        uri: String,
        /// What was being done.
        what: String,
        /// The last failure.
        reason: String,
    },
    /// The server refused a request (4xx): retrying would not help.
    #[error("MLflow server rejected {what}: {message}")]
    Rejected {
        /// What was being done, naming the offending key when one is known.
        what: String,
        /// The server's own message.
        message: String,
    },
}

/// A connection to one MLflow tracking server.
pub struct Client {
    base: String,
    shown: String,
    http: reqwest::blocking::Client,
    auth: Option<Auth>,
}

impl Client {
    /// A client for the server at `uri` (`http[s]://host:port`), with credentials from
    /// `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`.
    pub fn new(uri: &str) -> Result<Self, ClientError> {
        Self::with_auth(uri, Auth::from_env())
    }

    /// A client for the server at `uri` sending `auth`.
    pub fn with_auth(uri: &str, auth: Option<Auth>) -> Result<Self, ClientError> {
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(ClientError::NotHttp { uri: redact(uri) });
        }
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            // The server drops idle connections after 5 s; never reuse one it has closed.
            .pool_idle_timeout(Duration::from_secs(4))
            .build()
            .map_err(|e| ClientError::Http {
                reason: plain_error(&e),
            })?;
        Ok(Client {
            base: uri.trim_end_matches('/').to_string(),
            shown: redact(uri.trim_end_matches('/')),
            http,
            auth,
        })
    }

    /// The server's address, without credentials.
    pub fn uri(&self) -> &str {
        &self.shown
    }

    /// Sends a request, retrying connection errors and 5xx with backoff.
    fn send(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response, TrackingError> {
        let mut attempt = 0;
        loop {
            let mut builder = request();
            builder = match &self.auth {
                Some(Auth::Bearer(token)) => builder.bearer_auth(token),
                Some(Auth::Basic(user, password)) => builder.basic_auth(user, Some(password)),
                None => builder,
            };
            let reason = match builder.send() {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status();
                    let body = response.text().unwrap_or_default();
                    return Err(TrackingError::Rejected {
                        what: what.to_string(),
                        message: server_message(status, &body),
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    server_message(status, &response.text().unwrap_or_default())
                }
                // Without the URL: it may carry credentials.
                Err(error) => plain_error(&error.without_url()),
            };
            let Some(wait) = BACKOFF.get(attempt) else {
                return Err(TrackingError::Unreachable {
                    uri: self.shown.clone(),
                    what: what.to_string(),
                    reason,
                });
            };
            tracing::debug!(what, reason, "MLflow request failed; retrying");
            std::thread::sleep(*wait);
            attempt += 1;
        }
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/api/2.0/mlflow/{endpoint}", self.base)
    }

    fn post<T: DeserializeOwned>(
        &self,
        what: &str,
        endpoint: &str,
        body: &Value,
    ) -> Result<T, TrackingError> {
        let response = self.send(what, || self.http.post(self.url(endpoint)).json(body))?;
        self.decode(what, response)
    }

    fn get<T: DeserializeOwned>(
        &self,
        what: &str,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> Result<T, TrackingError> {
        let response = self.send(what, || self.http.get(self.url(endpoint)).query(query))?;
        self.decode(what, response)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        what: &str,
        response: reqwest::blocking::Response,
    ) -> Result<T, TrackingError> {
        response.json().map_err(|e| TrackingError::Unreachable {
            uri: self.shown.clone(),
            what: what.to_string(),
            reason: format!("unreadable reply: {}", plain_error(&e.without_url())),
        })
    }

    /// The id of experiment `name`, created when the server has none of that name.
    pub fn experiment(&self, name: &str) -> Result<String, TrackingError> {
        let what = format!("looking up experiment `{name}`");
        match self.get::<Value>(
            &what,
            "experiments/get-by-name",
            &[("experiment_name", name)],
        ) {
            Ok(reply) => Ok(string_at(&reply, "/experiment/experiment_id")),
            Err(TrackingError::Rejected { message, .. })
                if message.starts_with("RESOURCE_DOES_NOT_EXIST") =>
            {
                let reply: Value = self.post(
                    &format!("creating experiment `{name}`"),
                    "experiments/create",
                    &json!({ "name": name }),
                )?;
                Ok(string_at(&reply, "/experiment_id"))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a run; a nested run has the tag `mlflow.parentRunId`.
    pub fn create_run(
        &self,
        experiment_id: &str,
        name: &str,
        start_time: u64,
        tags: &[(String, String)],
    ) -> Result<Run, TrackingError> {
        #[derive(Deserialize)]
        struct Reply {
            run: RawRun,
        }
        let reply: Reply = self.post(
            &format!("creating run `{name}`"),
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": name,
                "start_time": start_time,
                "tags": key_values(tags),
            }),
        )?;
        Ok(reply.run.into())
    }

    /// Active runs of an experiment matching an MLflow search `filter`, every page.
    pub fn search(&self, experiment_id: &str, filter: &str) -> Result<Vec<Run>, TrackingError> {
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            runs: Vec<RawRun>,
            next_page_token: Option<String>,
        }
        let mut runs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({
                "experiment_ids": [experiment_id],
                "filter": filter,
                "max_results": 1000,
            });
            if let Some(token) = &token {
                body["page_token"] = json!(token);
            }
            let reply: Reply =
                self.post(&format!("searching runs ({filter})"), "runs/search", &body)?;
            runs.extend(reply.runs.into_iter().map(Run::from));
            match reply.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next),
                None => return Ok(runs),
            }
        }
    }

    /// Logs params, metrics and tags, split into calls within the server's limits. When the
    /// server rejects a call, its items are sent one by one to name the offending key (the
    /// others are kept: re-logging an equal value is accepted).
    pub fn log(
        &self,
        run_id: &str,
        what: &str,
        params: &[(String, String)],
        metrics: &[Metric],
        tags: &[(String, String)],
    ) -> Result<(), TrackingError> {
        fn pair((k, v): &(String, String)) -> (&str, Value) {
            (k.as_str(), json!({ "key": k, "value": v }))
        }
        // (field of the call, items per call, (key, item) pairs)
        type Kind<'a> = (&'a str, usize, Vec<(&'a str, Value)>);
        let kinds: [Kind; 3] = [
            ("params", MAX_PARAMS, params.iter().map(pair).collect()),
            (
                "metrics",
                MAX_METRICS,
                metrics
                    .iter()
                    .map(|m| (m.key.as_str(), metric_json(m)))
                    .collect(),
            ),
            ("tags", MAX_TAGS, tags.iter().map(pair).collect()),
        ];
        for (kind, limit, items) in kinds {
            let send = |items: &[(&str, Value)]| {
                let mut body = json!({ "run_id": run_id });
                body[kind] = items.iter().map(|(_, item)| item.clone()).collect();
                self.post::<Value>(what, "runs/log-batch", &body).map(drop)
            };
            for chunk in items.chunks(limit) {
                match send(chunk) {
                    Ok(()) => {}
                    Err(error @ TrackingError::Rejected { .. }) => {
                        for item in chunk {
                            send(std::slice::from_ref(item))
                                .map_err(|e| name_key(e, kind, item.0))?;
                        }
                        return Err(error);
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// Sets a run's status (`RUNNING`, `FINISHED`, `FAILED`, `KILLED`), and its end time (ms)
    /// when it ended.
    pub fn set_status(
        &self,
        run_id: &str,
        status: &str,
        end_time: Option<u64>,
    ) -> Result<(), TrackingError> {
        let mut body = json!({ "run_id": run_id, "status": status });
        if let Some(end_time) = end_time {
            body["end_time"] = json!(end_time);
        }
        self.post::<Value>(
            &format!("setting run {run_id} to {status}"),
            "runs/update",
            &body,
        )
        .map(drop)
    }

    /// Deletes a run (MLflow keeps it in its trash; searches no longer see it).
    pub fn delete_run(&self, run_id: &str) -> Result<(), TrackingError> {
        self.post::<Value>(
            &format!("deleting run {run_id}"),
            "runs/delete",
            &json!({ "run_id": run_id }),
        )
        .map(drop)
    }

    /// Uploads a file to a run's artifacts through the server's artifact proxy.
    pub fn upload(&self, run: &RunInfo, path: &str, bytes: Vec<u8>) -> Result<(), TrackingError> {
        let Some(location) = run.artifact_uri.strip_prefix("mlflow-artifacts:/") else {
            return Err(TrackingError::Rejected {
                what: format!("uploading artifact {path}"),
                message: format!(
                    "the run's artifacts go to `{}`, which only the server's artifact proxy \
                     (`mlflow-artifacts:`) lets xferlab reach; start the server with artifact \
                     proxying on (the default of `mlflow server`)",
                    run.artifact_uri
                ),
            });
        };
        let url = format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}/{path}",
            self.base,
            location.trim_matches('/')
        );
        self.send(&format!("uploading artifact {path}"), || {
            self.http.put(&url).body(bytes.clone())
        })
        .map(drop)
    }
}

/// Names the offending item in a rejected call's error.
fn name_key(error: TrackingError, kind: &str, key: &str) -> TrackingError {
    match error {
        TrackingError::Rejected { what, message } => TrackingError::Rejected {
            what: format!("{what}: {} `{key}`", kind.trim_end_matches('s')),
            message,
        },
        error => error,
    }
}

/// A reqwest error with its causes (e.g. "connection refused"), one line.
fn plain_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_shows_its_address_without_credentials() {
        let client = Client::new("http://ann:s3cret@127.0.0.1:1/").unwrap();
        assert_eq!(client.uri(), "http://127.0.0.1:1");
    }

    /// The headers of the one request a client sends to a listener that answers `{}`.
    /// (An MLflow server without auth ignores credentials, so it cannot show them.)
    fn headers_sent(auth: Auth) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = String::new();
            while reader.read_line(&mut headers).unwrap() > 2 && !headers.ends_with("\r\n\r\n") {}
            let mut stream = stream;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .unwrap();
            headers
        });
        let client = Client::with_auth(&uri, Some(auth)).unwrap();
        client.set_status("r", "FINISHED", None).unwrap();
        server.join().unwrap().to_lowercase()
    }

    #[test]
    fn credentials_go_in_the_authorization_header() {
        let bearer = headers_sent(Auth::Bearer("tok3n".into()));
        assert!(bearer.contains("authorization: bearer tok3n"), "{bearer}");
        // base64("ann:pw") = YW5uOnB3
        let basic = headers_sent(Auth::Basic("ann".into(), "pw".into()));
        assert!(basic.contains("authorization: basic yw5uonb3"), "{basic}");
    }

    #[test]
    fn only_http_addresses_are_servers() {
        let error = Client::new("127.0.0.1:5000").err().unwrap();
        assert_eq!(
            error.to_string(),
            "`127.0.0.1:5000` is not an http:// or https:// address of an MLflow server"
        );
    }
}
