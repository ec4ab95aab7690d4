//! Assertions on a plugin's outcome (success, a well-formed CNI error) and readers of the
//! fields of a CNI result.

use std::net::IpAddr;

use serde_json::Value;

use crate::store::Cidr;
use crate::CniOutput;

/// Panics with `what` and the plugin's exit status, stdout and stderr unless it succeeded.
pub fn expect_ok<'a>(out: &'a CniOutput, what: &str) -> &'a CniOutput {
    assert!(out.ok(), "{what} failed:\n{out}");
    out
}

/// Asserts a failed call with CNI error `code`, a well-formed error object on stdout and a
/// non-zero exit status; returns the error message.
pub fn expect_error(out: &CniOutput, code: u64, what: &str) -> String {
    assert_ne!(
        out.code, 0,
        "{what}: expected failure with code {code}, got success:\n{out}"
    );
    let Some(err) = out.json.as_ref() else {
        panic!("{what}: expected a CNI error object on stdout:\n{out}");
    };
    assert_eq!(
        out.error_code(),
        Some(code),
        "{what}: wrong error code:\n{out}"
    );
    for key in ["cniVersion", "msg"] {
        assert!(
            err.get(key).and_then(Value::as_str).is_some(),
            "{what}: error object lacks string {key:?}:\n{out}"
        );
    }
    assert!(
        err.get("details").is_none_or(Value::is_string),
        "{what}: error details must be a string:\n{out}"
    );
    out.error_msg().unwrap_or_default().to_owned()
}

/// Asserts a failed call with any CNI error code and a well-formed error object on stdout;
/// returns (code, message).
pub fn expect_failure(out: &CniOutput, what: &str) -> (u64, String) {
    assert_ne!(out.code, 0, "{what}: expected failure, got success:\n{out}");
    let code = out
        .error_code()
        .unwrap_or_else(|| panic!("{what}: no CNI error object with a code on stdout:\n{out}"));
    (code, expect_error(out, code, what))
}

/// The `ips[].address` values of a result (CIDR form).
pub fn result_cidrs(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no ips list: {result}"))
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap_or_else(|| panic!("ip without address: {result}"))
                .to_owned()
        })
        .collect()
}

/// The address of the result's first IP of the given family (no prefix).
pub fn result_ip(result: &Value, v6: bool) -> String {
    result_cidrs(result)
        .iter()
        .map(|c| addr_of(c))
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| {
            panic!(
                "result has no IPv{} address: {result}",
                if v6 { 6 } else { 4 }
            )
        })
}

/// The gateway of the result's first IP of the given family.
pub fn result_gateway(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ip| ip["address"].as_str().unwrap_or_default().contains(':') == v6)
        .and_then(|ip| ip["gateway"].as_str())
        .unwrap_or_else(|| {
            panic!(
                "result has no IPv{} gateway: {result}",
                if v6 { 6 } else { 4 }
            )
        })
        .to_owned()
}

/// The host-side veth named in a reef-bridge result (`interfaces[1]`).
pub fn result_host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no interfaces[1].name: {result}"))
        .to_owned()
}

/// `10.1.0.5/24` → `10.1.0.5`.
pub fn addr_of(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_owned()
}

/// Parses the JSON a cnitool command printed.
pub fn parse_stdout(stdout: &str, what: &str) -> Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout}"))
}

/// The addresses (no prefix) of a CNI result.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no ips: {result}"))
        .iter()
        .map(|i| {
            Cidr::parse(
                i["address"]
                    .as_str()
                    .unwrap_or_else(|| panic!("ip without address: {result}")),
            )
            .ip
        })
        .collect()
}

/// The only IPv4 entry of a result: (address CIDR, gateway).
pub fn result_v4(result: &Value) -> (Cidr, Option<IpAddr>) {
    let ips: Vec<&Value> = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no ips: {result}"))
        .iter()
        .filter(|i| !i["address"].as_str().unwrap_or_default().contains(':'))
        .collect();
    assert_eq!(ips.len(), 1, "one IPv4 address expected: {result}");
    (
        Cidr::parse(ips[0]["address"].as_str().unwrap_or_default()),
        ips[0]["gateway"]
            .as_str()
            .map(|g| g.parse().expect("gateway")),
    )
}
