//! reefctl's manifest reader (`apply -f`, `delete -f`): YAML or JSON, `---` documents,
//! `kind: List`. Every object it accepts becomes a record that encodes and decodes back
//! to itself (what reefctl writes to etcd is what the agent reads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reef_manifest::Object;
use reef_schema::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = reef_manifest::parse_refs(text);
    let Ok(objects) = reef_manifest::parse_objects(text) else {
        return;
    };
    for o in objects {
        let _ = o.object_ref().to_string();
        match o {
            Object::Service(s) => {
                let back: reef_schema::Service = decode(b"svc", &encode(&s)).expect("service");
                assert_eq!(back, s);
            }
            Object::NetworkPolicy(p) => {
                let back: reef_schema::NetworkPolicy = decode(b"pol", &encode(&p)).expect("policy");
                assert_eq!(back, p);
            }
            Object::Namespace(n) => {
                let back: reef_schema::Namespace = decode(b"ns", &encode(&n)).expect("namespace");
                assert_eq!(back, n);
            }
        }
    }
});
