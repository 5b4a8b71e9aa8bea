//! Credentials: sent with every request, taken from MLflow's conventional variables, and
//! kept out of every message (an address may carry them too).

/// Credentials sent with every request.
#[derive(Clone)]
pub enum Auth {
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
    /// `Authorization: Basic` with user and password.
    Basic(String, String),
}

impl Auth {
    /// MLflow's conventional variables: `MLFLOW_TRACKING_TOKEN`, else
    /// `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`.
    pub fn from_env() -> Option<Self> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        match (
            var("MLFLOW_TRACKING_TOKEN"),
            var("MLFLOW_TRACKING_USERNAME"),
        ) {
            (Some(token), _) => Some(Auth::Bearer(token)),
            (None, Some(user)) => Some(Auth::Basic(
                user,
                var("MLFLOW_TRACKING_PASSWORD").unwrap_or_default(),
            )),
            (None, None) => None,
        }
    }
}

/// `uri` without credentials written into it (`http://user:secret@host` → `http://host`).
pub fn redact(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_an_address_are_never_shown() {
        assert_eq!(
            redact("https://ann:s3cret@mlflow.example.org:8443/base"),
            "https://mlflow.example.org:8443/base"
        );
        assert_eq!(redact("http://127.0.0.1:5000"), "http://127.0.0.1:5000");
    }
}
