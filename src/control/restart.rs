//! Settings that only a restart applies: the addresses bound at start, the files read at start,
//! and the Kubernetes watch. A reload that changes them applies the rest and names these.

use crate::config::model::{RawConfig, RawKubernetes, RawListener};

/// The restart-only settings of a config, as the gateway started with them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RestartOnly {
    listeners: Vec<RawListener>,
    admin_address: String,
    token_file: Option<String>,
    state_file: Option<String>,
    readiness_address: String,
    metrics_address: String,
    kubernetes: Option<RawKubernetes>,
}

impl RestartOnly {
    /// Those of `raw`.
    pub(super) fn of(raw: &RawConfig) -> Self {
        RestartOnly {
            listeners: raw.listeners.clone(),
            admin_address: raw.admin.address.clone(),
            token_file: raw.admin.token_file.clone(),
            state_file: raw.admin.state_file.clone(),
            readiness_address: raw.readiness.address.clone(),
            metrics_address: raw.metrics.address.clone(),
            kubernetes: raw.kubernetes.clone(),
        }
    }

    /// The config paths of the settings in which `new` differs from these, in file order.
    pub(super) fn differences(&self, new: &RawConfig) -> Vec<&'static str> {
        let new = Self::of(new);
        [
            ("listeners", self.listeners != new.listeners),
            ("admin.address", self.admin_address != new.admin_address),
            ("admin.token_file", self.token_file != new.token_file),
            ("admin.state_file", self.state_file != new.state_file),
            (
                "readiness.address",
                self.readiness_address != new.readiness_address,
            ),
            (
                "metrics.address",
                self.metrics_address != new.metrics_address,
            ),
            ("kubernetes", self.kubernetes != new.kubernetes),
        ]
        .into_iter()
        .filter_map(|(path, differs)| differs.then_some(path))
        .collect()
    }
}
