//! A `.conflist` through reef-run's parser (libcni's checks), then each plugin's entry as
//! libcni hands it over (the list's name and cniVersion injected) through every plugin's
//! parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(list) = reef_run::cni::NetworkList::parse(data.to_vec(), "fuzz") else {
        return;
    };
    assert!(!list.plugins.is_empty());
    for p in &list.plugins {
        assert!(!p.plugin_type.is_empty() && !p.plugin_type.contains('/'));
        let mut conf = p.raw.clone();
        conf.insert("name".into(), json!(list.name));
        conf.insert("cniVersion".into(), json!(list.cni_version));
        let stdin = serde_json::to_vec(&Value::Object(conf)).unwrap_or_default();
        reef_fuzz::plugin_conf(&stdin);
    }
});
