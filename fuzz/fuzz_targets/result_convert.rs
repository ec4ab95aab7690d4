//! A result of any spec version (what a plugin prints, and the prevResult it is handed
//! back) read, printed in every version from 0.3.0 to 1.1.0 and read again: no panic, every
//! printed result parses, and it keeps exactly what its version can carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reef_cni::{CniResult, Version};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(r) = CniResult::from_json(&v) else {
        return;
    };
    reef_fuzz::read_faithfully(&v, &r);
    reef_fuzz::result_reparses(&r, Version::LATEST);
});
