use super::*;
use reef_schema::{Protocol, ServicePort, ServiceType, TrafficPolicy};

fn port(name: Option<&str>, protocol: Protocol, port: u16, target: u16) -> ServicePort {
    ServicePort {
        name: name.map(str::to_string),
        protocol,
        port,
        target_port: target,
        node_port: None,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn services(text: &str) -> Vec<Service> {
    match parse_objects(text) {
        Ok(objects) => objects
            .into_iter()
            .map(|o| match o {
                Object::Service(s) => s,
                other => panic!("{text}\n-> not a service: {other:?}"),
            })
            .collect(),
        Err(e) => panic!("{text}\n-> {e}"),
    }
}

fn one(text: &str) -> Service {
    let mut all = services(text);
    assert_eq!(all.len(), 1, "{text}");
    all.remove(0)
}

/// A Service named web in the default namespace with this (flow-style) spec.
fn svc(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {spec}\n")
}

const REALISTIC: &str = r#"# Reef services for the shop
---
apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
  annotations:
    prometheus.io/scrape: "true"
spec:
  type: NodePort
  selector:
    k8s-app: kube-dns
  ports:
    - name: dns
      protocol: UDP
      port: 53
      targetPort: 5353
      nodePort: 30053
    - name: dns-tcp
      protocol: TCP
      port: 53
      targetPort: "5353"
      nodePort: 30053
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 600
  externalTrafficPolicy: Local
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      clusterIP: 10.96.0.80
      selector: {app: web, tier: front}
      ports:
        - {name: http, port: 80, targetPort: 8080, appProtocol: http}
        - {name: https, port: 443, targetPort: 8443}
---
{"apiVersion": "v1", "kind": "Service",
 "metadata": {"name": "db", "namespace": "shop"},
 "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}],
          "sessionAffinity": "ClientIP"}}
...
"#;

#[test]
fn a_realistic_multi_document_input() {
    let got = services(REALISTIC);
    let dns = Service {
        namespace: "kube-system".into(),
        name: "dns".into(),
        kind: ServiceType::NodePort,
        cluster_ip: None,
        selector: labels(&[("k8s-app", "kube-dns")]),
        ports: vec![
            ServicePort {
                node_port: Some(30053),
                ..port(Some("dns"), Protocol::Udp, 53, 5353)
            },
            ServicePort {
                node_port: Some(30053),
                ..port(Some("dns-tcp"), Protocol::Tcp, 53, 5353)
            },
        ],
        affinity_timeout: Some(600),
        external_traffic_policy: TrafficPolicy::Local,
    };
    let web = Service {
        namespace: "shop".into(),
        name: "web".into(),
        kind: ServiceType::ClusterIP,
        cluster_ip: Some("10.96.0.80".parse().expect("ip")),
        selector: labels(&[("app", "web"), ("tier", "front")]),
        ports: vec![
            port(Some("http"), Protocol::Tcp, 80, 8080),
            port(Some("https"), Protocol::Tcp, 443, 8443),
        ],
        affinity_timeout: None,
        external_traffic_policy: TrafficPolicy::Cluster,
    };
    let db = Service {
        namespace: "shop".into(),
        name: "db".into(),
        kind: ServiceType::ClusterIP,
        cluster_ip: None,
        selector: labels(&[("app", "db")]),
        ports: vec![port(None, Protocol::Tcp, 5432, 5432)],
        affinity_timeout: Some(reef_schema::services::DEFAULT_AFFINITY_TIMEOUT),
        external_traffic_policy: TrafficPolicy::Cluster,
    };
    assert_eq!(got, vec![dns, web, db]);

    let refs = parse_refs(REALISTIC).expect("refs");
    let names: Vec<String> = refs.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "Service kube-system/dns",
            "Service shop/web",
            "Service shop/db"
        ]
    );
    let from_objects: Vec<ObjectRef> = parse_objects(REALISTIC)
        .expect("objects")
        .iter()
        .map(Object::object_ref)
        .collect();
    assert_eq!(from_objects, refs);
}

/// What `kubectl get service web -o yaml` prints.
const EXPORTED: &str = r#"apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"web","namespace":"default"},"spec":{"ports":[{"port":80,"targetPort":8080}],"selector":{"app":"web"}}}
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 1
  labels:
    app: web
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:metadata:
        f:annotations:
          .: {}
          f:kubectl.kubernetes.io/last-applied-configuration: {}
      f:spec:
        f:internalTrafficPolicy: {}
        f:ports:
          .: {}
          k:{"port":80,"protocol":"TCP"}:
            .: {}
            f:port: {}
            f:protocol: {}
            f:targetPort: {}
        f:selector: {}
        f:sessionAffinity: {}
        f:type: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2024-05-01T10:00:00Z"
  name: web
  namespace: default
  resourceVersion: "4711"
  uid: 0b7c1c3e-8a55-4c1e-9d0e-5f3c2a1b9e77
spec:
  clusterIP: 10.96.12.34
  clusterIPs:
  - 10.96.12.34
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - port: 80
    protocol: TCP
    targetPort: 8080
  selector:
    app: web
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"#;

#[test]
fn an_exported_manifest_with_status_and_managed_fields() {
    let s = one(EXPORTED);
    assert_eq!(
        s,
        Service {
            namespace: "default".into(),
            name: "web".into(),
            kind: ServiceType::ClusterIP,
            cluster_ip: Some("10.96.12.34".parse().expect("ip")),
            selector: labels(&[("app", "web")]),
            ports: vec![port(None, Protocol::Tcp, 80, 8080)],
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    );
}

#[test]
fn json_text_one_value_or_several_and_a_json_list() {
    let one_value = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},
        "spec":{"ports":[{"port":80,"targetPort":"8080"}]}}"#;
    assert_eq!(one(one_value).ports, [port(None, Protocol::Tcp, 80, 8080)]);

    let stream = format!("{one_value}\n{}", one_value.replace("\"a\"", "\"b\""));
    let names: Vec<String> = services(&stream).into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b"]);

    let list =
        format!(r#"{{"apiVersion":"v1","kind":"List","metadata":{{}},"items":[{one_value}]}}"#);
    assert_eq!(one(&list).name, "a");

    // Flow-style YAML starts like JSON and is read as YAML.
    let flow = "{apiVersion: v1, kind: Service, metadata: {name: c}, spec: {ports: [{port: 1}]}}";
    assert_eq!(one(flow).name, "c");
}

#[test]
fn defaults_and_accepted_forms() {
    let s = one(&svc("{ports: [{port: 80}]}"));
    assert_eq!(s.namespace, "default");
    assert_eq!(s.kind, ServiceType::ClusterIP);
    assert_eq!(s.cluster_ip, None);
    assert!(s.selector.is_empty());
    assert_eq!(s.ports, [port(None, Protocol::Tcp, 80, 80)]);
    assert_eq!(s.affinity_timeout, None);
    assert_eq!(s.external_traffic_policy, TrafficPolicy::Cluster);

    type Check = fn(&Service) -> bool;
    let cases: &[(&str, Check)] = &[
        ("{sessionAffinity: ClientIP, ports: [{port: 80}]}", |s| {
            s.affinity_timeout == Some(10800)
        }),
        (
            "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {}}, ports: [{port: 80}]}",
            |s| s.affinity_timeout == Some(10800),
        ),
        (
            "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}, ports: [{port: 80}]}",
            |s| s.affinity_timeout == Some(86400),
        ),
        ("{sessionAffinity: None, ports: [{port: 80}]}", |s| {
            s.affinity_timeout.is_none()
        }),
        // IntOrString: a numeric string is a number; the zero values default to `port`.
        ("{ports: [{port: 80, targetPort: '9090'}]}", |s| {
            s.ports[0].target_port == 9090
        }),
        ("{ports: [{port: 80, targetPort: 0}]}", |s| {
            s.ports[0].target_port == 80
        }),
        ("{ports: [{port: 80, targetPort: ''}]}", |s| {
            s.ports[0].target_port == 80
        }),
        ("{ports: [{port: 80, protocol: UDP}]}", |s| {
            s.ports[0].protocol == Protocol::Udp
        }),
        // One port needs no name; an empty name is none.
        ("{ports: [{name: '', port: 80}]}", |s| s.ports[0].name.is_none()),
        ("{type: NodePort, ports: [{port: 80}]}", |s| {
            s.kind == ServiceType::NodePort && s.ports[0].node_port.is_none()
        }),
        ("{type: NodePort, ports: [{port: 80, nodePort: 0}]}", |s| {
            s.ports[0].node_port.is_none()
        }),
        ("{type: NodePort, externalTrafficPolicy: Global, ports: [{port: 80}]}", |s| {
            s.external_traffic_policy == TrafficPolicy::Cluster
        }),
        ("{externalTrafficPolicy: Cluster, ports: [{port: 80}]}", |s| {
            s.external_traffic_policy == TrafficPolicy::Cluster
        }),
        // TCP and UDP on one node port, and on one port.
        (
            "{type: NodePort, ports: [{name: a, port: 53, protocol: UDP, nodePort: 30053}, {name: b, port: 53, nodePort: 30053}]}",
            |s| s.ports.len() == 2,
        ),
        ("{clusterIP: '', clusterIPs: [], ports: [{port: 80}]}", |s| {
            s.cluster_ip.is_none()
        }),
        ("{clusterIP: 'fd00:96::10', ports: [{port: 80}]}", |s| {
            s.cluster_ip == "fd00:96::10".parse().ok()
        }),
        (
            "{clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ipFamilies: [IPv4], ipFamilyPolicy: SingleStack, ports: [{port: 80}]}",
            |s| s.cluster_ip == "10.96.0.10".parse().ok(),
        ),
        (
            "{internalTrafficPolicy: Cluster, publishNotReadyAddresses: false, ports: [{port: 80}]}",
            |s| s.ports.len() == 1,
        ),
        // null is absent, as in Kubernetes.
        ("{type: null, selector: ~, externalIPs: null, ports: [{port: 80, nodePort: null}]}", |s| {
            s.kind == ServiceType::ClusterIP
        }),
        ("{selector: {app.kubernetes.io/name: web, empty: ''}, ports: [{port: 80}]}", |s| {
            s.selector == labels(&[("app.kubernetes.io/name", "web"), ("empty", "")])
        }),
    ];
    for (spec, check) in cases {
        let s = one(&svc(spec));
        assert!(check(&s), "{spec}: {s:?}");
    }

    // Same name in two namespaces; unknown metadata is ignored; empty namespace is default.
    let two = format!(
        "{}---\n{}",
        svc("{ports: [{port: 80}]}")
            .replace("{name: web}", "{name: web, namespace: a, finalizers: [x]}"),
        svc("{ports: [{port: 80}]}").replace("{name: web}", "{name: web, namespace: ''}")
    );
    let got: Vec<String> = services(&two).iter().map(Service::id).collect();
    assert_eq!(got, ["a/web", "default/web"]);
}

#[test]
fn empty_input_and_empty_documents() {
    for text in [
        "",
        "\n",
        "# nothing\n",
        "---\n",
        "---\n---\n# c\n...\n",
        "\u{feff}",
        "null",
        "~\n",
    ] {
        assert_eq!(parse_objects(text), Ok(vec![]), "{text:?}");
        assert_eq!(parse_refs(text), Ok(vec![]), "{text:?}");
    }
    // Empty documents count in the numbering.
    let text = format!(
        "---\n# empty\n---\n{}",
        svc("{type: Bogus, ports: [{port: 80}]}")
    );
    let e = parse_objects(&text).expect_err("bogus");
    assert!(
        e.to_string()
            .starts_with("document 2 (Service web): spec.type"),
        "{e}"
    );
}

fn field_error(text: &str) -> (String, String) {
    match parse_objects(text) {
        Err(e) => match &e {
            ManifestError::Field { field, .. } => (field.clone(), e.to_string()),
            _ => panic!("{text}\n-> not a field error: {e:?}"),
        },
        Ok(objects) => panic!("{text}\n-> accepted: {objects:?}"),
    }
}

#[test]
fn every_refusal_names_its_field() {
    let p = "ports: [{port: 80}]";
    let np = "type: NodePort, ports: [{port: 80}]";
    let cases: Vec<(String, &str)> = vec![
        // spec.type
        (format!("{{type: LoadBalancer, {p}}}"), "spec.type"),
        (format!("{{type: ExternalName, externalName: x.example, {p}}}"), "spec.type"),
        (format!("{{type: clusterip, {p}}}"), "spec.type"),
        (format!("{{type: 1, {p}}}"), "spec.type"),
        // spec.selector
        (format!("{{selector: [app], {p}}}"), "spec.selector"),
        (format!("{{selector: {{app: 1}}, {p}}}"), "spec.selector[app]"),
        (format!("{{selector: {{app: true}}, {p}}}"), "spec.selector[app]"),
        (format!("{{selector: {{app: }}, {p}}}"), "spec.selector[app]"),
        (format!("{{selector: {{app: {}}}, {p}}}", "x".repeat(64)), "spec.selector[app]"),
        (format!("{{selector: {{'': x}}, {p}}}"), "spec.selector"),
        // spec.ports
        ("{}".to_string(), "spec.ports"),
        ("{ports: []}".to_string(), "spec.ports"),
        ("{ports: {port: 80}}".to_string(), "spec.ports"),
        ("{ports: [80]}".to_string(), "spec.ports[0]"),
        ("{ports: [{port: 80, hostPort: 1}]}".to_string(), "spec.ports[0].hostPort"),
        ("{ports: [{name: a, port: 80}, {port: 81}]}".to_string(), "spec.ports[1].name"),
        ("{ports: [{port: 80}, {name: b, port: 81}]}".to_string(), "spec.ports[0].name"),
        ("{ports: [{name: a, port: 80}, {name: a, port: 81}]}".to_string(), "spec.ports[1].name"),
        ("{ports: [{name: HTTP, port: 80}]}".to_string(), "spec.ports[0].name"),
        ("{ports: [{name: 7, port: 80}]}".to_string(), "spec.ports[0].name"),
        ("{ports: [{port: 80, protocol: SCTP}]}".to_string(), "spec.ports[0].protocol"),
        ("{ports: [{port: 80, protocol: tcp}]}".to_string(), "spec.ports[0].protocol"),
        ("{ports: [{targetPort: 80}]}".to_string(), "spec.ports[0].port"),
        ("{ports: [{port: 0}]}".to_string(), "spec.ports[0].port"),
        ("{ports: [{port: 65536}]}".to_string(), "spec.ports[0].port"),
        ("{ports: [{port: -1}]}".to_string(), "spec.ports[0].port"),
        ("{ports: [{port: '80'}]}".to_string(), "spec.ports[0].port"),
        ("{ports: [{port: 80.5}]}".to_string(), "spec.ports[0].port"),
        ("{ports: [{port: 18446744073709551615}]}".to_string(), "spec.ports[0].port"),
        ("{ports: [{port: 80, targetPort: http}]}".to_string(), "spec.ports[0].targetPort"),
        ("{ports: [{port: 80, targetPort: '8o8o'}]}".to_string(), "spec.ports[0].targetPort"),
        ("{ports: [{port: 80, targetPort: 70000}]}".to_string(), "spec.ports[0].targetPort"),
        ("{ports: [{port: 80, targetPort: '99999999999999999999999'}]}".to_string(), "spec.ports[0].targetPort"),
        ("{ports: [{port: 80, targetPort: -8080}]}".to_string(), "spec.ports[0].targetPort"),
        ("{ports: [{port: 80, targetPort: [8080]}]}".to_string(), "spec.ports[0].targetPort"),
        ("{ports: [{port: 80, nodePort: 30080}]}".to_string(), "spec.ports[0].nodePort"),
        ("{type: ClusterIP, ports: [{port: 80, nodePort: 30080}]}".to_string(), "spec.ports[0].nodePort"),
        ("{type: NodePort, ports: [{port: 80, nodePort: 70000}]}".to_string(), "spec.ports[0].nodePort"),
        ("{type: NodePort, ports: [{port: 80, nodePort: '30080'}]}".to_string(), "spec.ports[0].nodePort"),
        ("{ports: [{name: a, port: 80}, {name: b, port: 80, targetPort: 81}]}".to_string(), "spec.ports[1]"),
        (
            "{type: NodePort, ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]}".to_string(),
            "spec.ports[1].nodePort",
        ),
        // spec.clusterIP, clusterIPs, ipFamilies, ipFamilyPolicy
        (format!("{{clusterIP: None, {p}}}"), "spec.clusterIP"),
        (format!("{{clusterIP: 10.96.0.300, {p}}}"), "spec.clusterIP"),
        (format!("{{clusterIP: 42, {p}}}"), "spec.clusterIP"),
        (format!("{{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], {p}}}"), "spec.clusterIPs"),
        (format!("{{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1, 'fd00::1'], {p}}}"), "spec.clusterIPs"),
        (format!("{{clusterIPs: [10.96.0.1], {p}}}"), "spec.clusterIPs"),
        (format!("{{clusterIP: 10.96.0.1, clusterIPs: 10.96.0.1, {p}}}"), "spec.clusterIPs"),
        (format!("{{clusterIP: 10.96.0.1, clusterIPs: [nope], {p}}}"), "spec.clusterIPs[0]"),
        (format!("{{ipFamilies: [IPv6], {p}}}"), "spec.ipFamilies"),
        (format!("{{ipFamilies: [IPv4, IPv6], {p}}}"), "spec.ipFamilies"),
        (format!("{{ipFamilies: IPv4, {p}}}"), "spec.ipFamilies"),
        (format!("{{clusterIP: 'fd00::1', ipFamilies: [IPv4], {p}}}"), "spec.clusterIP"),
        (format!("{{ipFamilyPolicy: PreferDualStack, {p}}}"), "spec.ipFamilyPolicy"),
        (format!("{{ipFamilyPolicy: RequireDualStack, {p}}}"), "spec.ipFamilyPolicy"),
        // session affinity
        (format!("{{sessionAffinity: Sticky, {p}}}"), "spec.sessionAffinity"),
        (
            format!("{{sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}, {p}}}"),
            "spec.sessionAffinityConfig",
        ),
        (
            format!("{{sessionAffinity: None, sessionAffinityConfig: {{}}, {p}}}"),
            "spec.sessionAffinityConfig",
        ),
        (
            format!("{{sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 0}}}}, {p}}}"),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
        (
            format!("{{sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 86401}}}}, {p}}}"),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
        (
            format!("{{sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: '60'}}}}, {p}}}"),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
        (
            format!("{{sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeout: 60}}}}, {p}}}"),
            "spec.sessionAffinityConfig.clientIP.timeout",
        ),
        (
            format!("{{sessionAffinity: ClientIP, sessionAffinityConfig: {{serverIP: {{}}}}, {p}}}"),
            "spec.sessionAffinityConfig.serverIP",
        ),
        // traffic policies
        (format!("{{externalTrafficPolicy: Local, {p}}}"), "spec.externalTrafficPolicy"),
        (format!("{{{np}, externalTrafficPolicy: Sometimes}}"), "spec.externalTrafficPolicy"),
        (format!("{{internalTrafficPolicy: Local, {p}}}"), "spec.internalTrafficPolicy"),
        (format!("{{internalTrafficPolicy: Nearby, {p}}}"), "spec.internalTrafficPolicy"),
        (format!("{{publishNotReadyAddresses: true, {p}}}"), "spec.publishNotReadyAddresses"),
        (format!("{{publishNotReadyAddresses: 'yes', {p}}}"), "spec.publishNotReadyAddresses"),
        // refused whenever present
        (format!("{{externalIPs: [192.0.2.1], {p}}}"), "spec.externalIPs"),
        (format!("{{{np}, loadBalancerIP: 192.0.2.1}}"), "spec.loadBalancerIP"),
        (format!("{{{np}, loadBalancerSourceRanges: [0.0.0.0/0]}}"), "spec.loadBalancerSourceRanges"),
        (format!("{{externalName: db.example.com, {p}}}"), "spec.externalName"),
        (format!("{{{np}, healthCheckNodePort: 31000}}"), "spec.healthCheckNodePort"),
        (format!("{{{np}, allocateLoadBalancerNodePorts: true}}"), "spec.allocateLoadBalancerNodePorts"),
        (format!("{{loadBalancerClass: example.com/lb, {p}}}"), "spec.loadBalancerClass"),
        (format!("{{trafficDistribution: PreferClose, {p}}}"), "spec.trafficDistribution"),
        (format!("{{topologyKeys: ['*'], {p}}}"), "spec.topologyKeys"),
    ];
    for (spec, path) in &cases {
        let (field, message) = field_error(&svc(spec));
        assert_eq!(field, *path, "{spec}: {message}");
        assert!(
            message.starts_with(&format!("document 1 (Service web): {path}: ")),
            "{spec}: {message}"
        );
    }

    let head = "apiVersion: v1\nkind: Service\n";
    let body = "spec: {ports: [{port: 80}]}\n";
    let objects: Vec<(String, &str)> = vec![
        (
            format!("kind: Service\nmetadata: {{name: web}}\n{body}"),
            "apiVersion",
        ),
        (
            format!("apiVersion: v1\nmetadata: {{name: web}}\n{body}"),
            "kind",
        ),
        (
            format!("apiVersion: 1\nkind: Service\nmetadata: {{name: web}}\n{body}"),
            "apiVersion",
        ),
        (format!("{head}{body}"), "metadata"),
        (format!("{head}metadata: web\n{body}"), "metadata"),
        (format!("{head}metadata: {{}}\n{body}"), "metadata.name"),
        (
            format!("{head}metadata: {{name: 7}}\n{body}"),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{generateName: web-}}\n{body}"),
            "metadata.generateName",
        ),
        (
            format!("{head}metadata: {{name: web, generateName: web-}}\n{body}"),
            "metadata.generateName",
        ),
        (
            format!("{head}metadata: {{name: Web}}\n{body}"),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: 1web}}\n{body}"),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: web-}}\n{body}"),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: web.shop}}\n{body}"),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: {}}}\n{body}", "a".repeat(64)),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: web, namespace: Shop}}\n{body}"),
            "metadata.namespace",
        ),
        (
            format!("{head}metadata: {{name: web, namespace: -shop}}\n{body}"),
            "metadata.namespace",
        ),
        (
            format!("{head}metadata: {{name: web, namespace: [a]}}\n{body}"),
            "metadata.namespace",
        ),
        (format!("{head}metadata: {{name: web}}\n"), "spec"),
        (
            format!("{head}metadata: {{name: web}}\nspec: [ports]\n"),
            "spec",
        ),
        (
            format!("{head}metadata: {{name: web}}\ndata: {{}}\n{body}"),
            "data",
        ),
    ];
    for (text, path) in &objects {
        let (field, message) = field_error(text);
        assert_eq!(field, *path, "{text}: {message}");
        assert!(
            message.contains(&format!(": {path}: ")),
            "{text}: {message}"
        );
    }
    // The longest names that are allowed.
    let name = format!("a{}", "0".repeat(62));
    let ok = format!(
        "{head}metadata: {{name: {name}, namespace: 0{}}}\n{body}",
        "a".repeat(62)
    );
    assert_eq!(one(&ok).name, name);
}

#[test]
fn unsupported_kinds() {
    for (api_version, kind) in [
        ("apps/v1", "Deployment"),
        ("v2", "Service"),
        ("v1", "NetworkPolicy"),
        ("networking.k8s.io/v1beta1", "NetworkPolicy"),
        ("networking.k8s.io/v1", "Ingress"),
        ("networking.k8s.io/v1", "Namespace"),
        ("v1", "ServiceList"),
    ] {
        let text = format!("apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x}}\n");
        let e = parse_refs(&text).expect_err(&text);
        assert!(matches!(e, ManifestError::UnsupportedKind { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains(&format!("apiVersion {api_version:?}"))
                && message.contains(&format!("kind {kind:?}"))
                && message.contains("NetworkPolicy and v1 Namespace"),
            "{message}"
        );
    }
}

#[test]
fn duplicates_and_all_or_nothing() {
    let web = svc("{ports: [{port: 80}]}");
    let text = format!(
        "{web}---\napiVersion: v1\nkind: List\nitems:\n- {}",
        one_line(&web)
    );
    let e = parse_objects(&text).expect_err("duplicate");
    assert!(matches!(e, ManifestError::Duplicate { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "document 2, items[0] (Service web): Service default/web is defined twice (first in document 1 (Service web))"
    );
    assert!(matches!(
        parse_refs(&text),
        Err(ManifestError::Duplicate { .. })
    ));
    // Explicit default namespace is the same object.
    let text = format!(
        "{web}---\n{}",
        web.replace("{name: web}", "{name: web, namespace: default}")
    );
    assert!(matches!(
        parse_objects(&text),
        Err(ManifestError::Duplicate { .. })
    ));

    // One bad document fails the whole input.
    let text = format!(
        "{web}---\n{}",
        svc("{type: LoadBalancer, ports: [{port: 80}]}").replace("web", "lb")
    );
    let e = parse_objects(&text).expect_err("all or nothing");
    assert!(
        e.to_string()
            .starts_with("document 2 (Service lb): spec.type:"),
        "{e}"
    );
    // ...but delete only needs the names.
    let refs = parse_refs(&text).expect("refs");
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[1].name, "lb");
}

/// A YAML document as one flow mapping (for List items).
fn one_line(doc: &str) -> String {
    let parts: Vec<String> = doc.lines().map(str::to_string).collect();
    format!("{{{}}}\n", parts.join(", "))
}

#[test]
fn lists() {
    let item = "{apiVersion: v1, kind: Service, metadata: {name: a}, spec: {ports: [{port: 80}]}}";
    let list = |items: &str| {
        format!("apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: ''}}\nitems: {items}\n")
    };
    assert_eq!(services(&list(&format!("[{item}]"))).len(), 1);
    assert_eq!(services(&list("[]")).len(), 0);
    assert_eq!(services(&list("null")).len(), 0);

    let cases = [
        (list("{a: 1}"), "document 1 (List): items: must be a list"),
        (
            list(&format!("[{item}, 7]")),
            "document 1 (List): items[1]: must be a mapping",
        ),
        (
            list("[{apiVersion: v1, kind: List, items: []}]"),
            "document 1 (List): items[0]: a List inside a List",
        ),
        (
            list(&format!(
                "[{item}, {}]",
                item.replace("name: a", "name: b").replace("80", "0")
            )),
            "document 1, items[1] (Service b): spec.ports[0].port:",
        ),
        (
            list("[{kind: Service}]"),
            "document 1, items[0]: apiVersion: required",
        ),
    ];
    for (text, start) in cases {
        let e = parse_objects(&text).expect_err(&text);
        assert!(e.to_string().starts_with(start), "{text}\n-> {e}");
    }
}

#[test]
fn refs_read_only_the_identity() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {type: LoadBalancer, whatever: [1]}\n";
    assert_eq!(
        parse_refs(text),
        Ok(vec![ObjectRef {
            kind: "Service".into(),
            namespace: "shop".into(),
            name: "web".into()
        }])
    );
    let cases = [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: shop}\n",
            "metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {generateName: x-}\n",
            "metadata.generateName",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: Web}\n",
            "metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a_b}\n",
            "metadata.namespace",
        ),
        ("apiVersion: v1\nkind: Service\n", "metadata"),
    ];
    for (text, path) in cases {
        match parse_refs(text) {
            Err(ManifestError::Field { field, .. }) => assert_eq!(field, path, "{text}"),
            other => panic!("{text} -> {other:?}"),
        }
    }
}

fn parse_error(text: &str) -> (usize, Option<usize>, String) {
    match parse_objects(text) {
        Err(ManifestError::Parse {
            document,
            line,
            message,
            ..
        }) => (document, line, message),
        other => panic!("{text:?} -> not a parse error: {other:?}"),
    }
}

#[test]
fn parse_errors_name_the_document_and_the_line() {
    let web = svc("{ports: [{port: 80}]}");
    let cases: Vec<(String, usize, Option<usize>, &str)> = vec![
        (
            format!("{web}---\nkind: Service\n  bad: indent\n"),
            2,
            Some(7),
            "invalid YAML",
        ),
        (
            format!("{web}---\nmetadata: {{name: [web}}\n"),
            2,
            Some(6),
            "invalid YAML",
        ),
        (
            format!("{web}---\na: &x {{b: 1}}\nc: *x\n"),
            2,
            Some(7),
            "aliases",
        ),
        (
            format!("{web}---\n? [a]\n: b\n"),
            2,
            Some(6),
            "mapping key must be a scalar",
        ),
        (
            format!("{web}---\na: 1\nb: 2\na: 3\n"),
            2,
            Some(8),
            "duplicate mapping key \"a\"",
        ),
        (
            format!("{web}---\n- a\n- b\n"),
            2,
            Some(6),
            "must be a mapping",
        ),
        (
            format!("{web}---\njust text\n"),
            2,
            Some(6),
            "must be a mapping",
        ),
        (
            format!("{web}---\nstatus: {{x: .nan}}\n"),
            2,
            Some(6),
            "not a finite number",
        ),
        (
            format!("{web}---\nport: !!int eighty\n"),
            2,
            Some(6),
            "!!int",
        ),
        (
            format!("x: {}\n", "[".repeat(200)),
            1,
            Some(1),
            "nested deeper than 100",
        ),
        (
            format!("{}1", "[".repeat(200)),
            1,
            Some(1),
            "invalid JSON: recursion limit",
        ),
        (
            format!("{web}---\n# NUL\nkind: Ser\0vice\n"),
            2,
            Some(7),
            "U+0000",
        ),
        (format!("{web}\u{7f}"), 1, Some(5), "U+007F"),
        (
            "---\n# c\n---\na: \u{1b}[0m\n".to_string(),
            2,
            Some(4),
            "U+001B",
        ),
        (
            "{\"apiVersion\": \"v1\",\n \"kind\": \"Service\",,}".to_string(),
            1,
            Some(2),
            "invalid JSON",
        ),
    ];
    for (text, document, line, needle) in cases {
        let (d, l, message) = parse_error(&text);
        assert_eq!((d, l), (document, line), "{text:?}: {message}");
        assert!(message.contains(needle), "{text:?}: {message}");
    }
    let e = parse_objects("a: [1\n").expect_err("eof");
    assert!(
        e.to_string()
            .starts_with("document 1, line 2, column 1: invalid YAML"),
        "{e}"
    );
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Both entry points, with the error formatted: none of it may panic.
fn exercise(text: &str) {
    if let Err(e) = parse_objects(text) {
        let _ = e.to_string();
    }
    if let Err(e) = parse_refs(text) {
        let _ = e.to_string();
    }
}

#[test]
fn mutated_manifests_never_panic() {
    const INTERESTING: &[u8] = b":-[]{}\"'\n #&*!|>?,.0123456789aZ\t%@\\~";
    let seeds = [REALISTIC, EXPORTED];
    let mut rng = Rng(0x5eed_f00d_0eef);
    for round in 0..600 {
        let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
                1 => bytes[at] = rng.next() as u8,
                2 => {
                    bytes.remove(at);
                }
                _ => {
                    let len = rng.below(16).min(bytes.len() - at);
                    let chunk: Vec<u8> = bytes[at..at + len].to_vec();
                    let to = rng.below(bytes.len());
                    bytes.splice(to..to, chunk);
                }
            }
        }
        exercise(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn truncated_manifests_never_panic() {
    for seed in [REALISTIC, EXPORTED] {
        for (at, _) in seed.char_indices() {
            exercise(&seed[..at]);
        }
    }
}

#[test]
fn pathological_inputs_end_in_errors() {
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n";
    let texts = [
        "[".repeat(100_000),
        "{".repeat(100_000),
        "{a: ".repeat(50_000),
        "- ".repeat(50_000),
        format!("{}1{}", "[".repeat(99), "]".repeat(99)),
        bomb.to_string(),
        "*a".to_string(),
        "\0\u{1}\u{7f}".to_string(),
        "%YAML 1.2\n%TAG ! tag:x,2000:\n--- !foo\na: !bar b\n".to_string(),
        "\t\tapiVersion: v1".to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n"
            .repeat(2),
        format!("a: \"{}", "x".repeat(100_000)),
        "{\"a\": 1} {\"b\": [}".to_string(),
        "[1e999999]".to_string(),
        "a: 1e999999\n".to_string(),
        "? - a\n  - b\n: c\n".to_string(),
    ];
    for text in ["&a", "---\n---\n...\n...\n---", "", "\u{feff}\u{feff}"] {
        exercise(text);
    }
    for text in &texts {
        exercise(text);
        assert!(
            parse_objects(text).is_err(),
            "{:?}",
            &text[..text.len().min(60)]
        );
    }
}

// NetworkPolicy and Namespace.

use reef_schema::policy::{
    IpBlock, L4Protocol, LabelSelector, Namespace, NetworkPolicy, Operator, Peer, PolicyPort,
    PolicyRule, PolicyType, Requirement, NAME_LABEL,
};

fn objects(text: &str) -> Vec<Object> {
    parse_objects(text).unwrap_or_else(|e| panic!("{text}\n-> {e}"))
}

fn one_policy(text: &str) -> NetworkPolicy {
    match objects(text).as_slice() {
        [Object::NetworkPolicy(p)] => p.clone(),
        other => panic!("{text}\n-> {other:?}"),
    }
}

/// A NetworkPolicy named p in namespace x with this (flow-style) spec.
fn np(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\n"
    )
}

fn select(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(kv),
        match_expressions: vec![],
    }
}

fn tcp(port: u16) -> PolicyPort {
    PolicyPort {
        protocol: L4Protocol::Tcp,
        port: Some(port),
        end_port: None,
    }
}

const POLICIES: &str = r#"# The upstream e2e shapes, as operators write them.
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels: {ns: x, team: blue}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-same, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web.from-y, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Ingress]
  ingress:
  - from:
    # AND: pods b of namespaces labelled ns in (y)
    - namespaceSelector:
        matchExpressions:
        - {key: ns, operator: In, values: [y]}
      podSelector:
        matchLabels: {pod: b}
    # OR: anything in 192.0.2.0/24 but 192.0.2.128/25
    - ipBlock:
        cidr: 192.0.2.0/24
        except: [192.0.2.128/25]
    ports:
    - port: 80
    - {protocol: UDP, port: 5000, endPort: 5100}
    - protocol: SCTP
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-dns}
spec:
  podSelector:
    matchExpressions:
    - {key: pod, operator: NotIn, values: [c]}
    - {key: debug, operator: DoesNotExist}
    - {key: pod, operator: Exists}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
    ports:
    - {protocol: UDP, port: 53}
  - {}
"#;

#[test]
fn a_realistic_policy_input() {
    let got = objects(POLICIES);
    let ns = Namespace::new("x", labels(&[("ns", "x"), ("team", "blue")]));
    let deny_all = NetworkPolicy {
        namespace: "x".into(),
        name: "deny-all".into(),
        pod_selector: LabelSelector::default(),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![],
        egress: vec![],
    };
    let allow_same = NetworkPolicy {
        name: "allow-same".into(),
        ingress: vec![PolicyRule {
            peers: vec![Peer {
                pod_selector: Some(LabelSelector::default()),
                namespace_selector: None,
                ip_block: None,
            }],
            ports: vec![],
        }],
        ..deny_all.clone()
    };
    let from_y = NetworkPolicy {
        name: "web.from-y".into(),
        pod_selector: select(&[("pod", "a")]),
        ingress: vec![PolicyRule {
            peers: vec![
                Peer {
                    pod_selector: Some(select(&[("pod", "b")])),
                    namespace_selector: Some(LabelSelector {
                        match_labels: BTreeMap::new(),
                        match_expressions: vec![Requirement {
                            key: "ns".into(),
                            operator: Operator::In,
                            values: vec!["y".into()],
                        }],
                    }),
                    ip_block: None,
                },
                Peer {
                    pod_selector: None,
                    namespace_selector: None,
                    ip_block: Some(IpBlock {
                        cidr: "192.0.2.0/24".parse().expect("cidr"),
                        except: vec!["192.0.2.128/25".parse().expect("cidr")],
                    }),
                },
            ],
            ports: vec![
                tcp(80),
                PolicyPort {
                    protocol: L4Protocol::Udp,
                    port: Some(5000),
                    end_port: Some(5100),
                },
                PolicyPort {
                    protocol: L4Protocol::Sctp,
                    port: None,
                    end_port: None,
                },
            ],
        }],
        ..deny_all.clone()
    };
    let req = |key: &str, operator, values: &[&str]| Requirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let egress_dns = NetworkPolicy {
        namespace: "default".into(),
        name: "egress-dns".into(),
        pod_selector: LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![
                req("pod", Operator::NotIn, &["c"]),
                req("debug", Operator::DoesNotExist, &[]),
                req("pod", Operator::Exists, &[]),
            ],
        },
        // Defaulted: egress rules are present.
        policy_types: vec![PolicyType::Ingress, PolicyType::Egress],
        ingress: vec![],
        egress: vec![
            PolicyRule {
                peers: vec![Peer {
                    pod_selector: None,
                    namespace_selector: Some(select(&[(NAME_LABEL, "kube-system")])),
                    ip_block: None,
                }],
                ports: vec![PolicyPort {
                    protocol: L4Protocol::Udp,
                    port: Some(53),
                    end_port: None,
                }],
            },
            PolicyRule::default(),
        ],
    };
    assert_eq!(
        got,
        vec![
            Object::Namespace(ns),
            Object::NetworkPolicy(deny_all),
            Object::NetworkPolicy(allow_same),
            Object::NetworkPolicy(from_y),
            Object::NetworkPolicy(egress_dns),
        ]
    );
    let refs: Vec<String> = parse_refs(POLICIES)
        .expect("refs")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        refs,
        [
            "Namespace x",
            "NetworkPolicy x/deny-all",
            "NetworkPolicy x/allow-same",
            "NetworkPolicy x/web.from-y",
            "NetworkPolicy default/egress-dns",
        ]
    );
    let from_objects: Vec<ObjectRef> = got.iter().map(Object::object_ref).collect();
    assert_eq!(from_objects, parse_refs(POLICIES).expect("refs"));
}

/// What `kubectl get networkpolicy,namespace -o yaml` prints (a List, with status and
/// managed fields).
const EXPORTED_POLICY: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"annotations":{},"name":"allow-80","namespace":"x"},"spec":{"ingress":[{"ports":[{"port":80}]}],"podSelector":{}}}
    creationTimestamp: "2024-05-01T10:00:00Z"
    generation: 1
    managedFields:
    - apiVersion: networking.k8s.io/v1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:ingress: {}
          f:podSelector: {}
          f:policyTypes: {}
      manager: kubectl-client-side-apply
      operation: Update
    name: allow-80
    namespace: x
    resourceVersion: "812"
    uid: 6f1c2a3e-0000-4c1e-9d0e-5f3c2a1b9e77
  spec:
    ingress:
    - ports:
      - port: 80
        protocol: TCP
    podSelector: {}
    policyTypes:
    - Ingress
  status: {}
- apiVersion: v1
  kind: Namespace
  metadata:
    creationTimestamp: "2024-05-01T09:00:00Z"
    labels:
      kubernetes.io/metadata.name: x
      ns: x
    name: x
    resourceVersion: "700"
    uid: 0b7c1c3e-8a55-4c1e-9d0e-5f3c2a1b9e77
  spec:
    finalizers:
    - kubernetes
  status:
    phase: Active
"#;

#[test]
fn exported_policies_and_namespaces() {
    let got = objects(EXPORTED_POLICY);
    assert_eq!(
        got,
        vec![
            Object::NetworkPolicy(NetworkPolicy {
                namespace: "x".into(),
                name: "allow-80".into(),
                pod_selector: LabelSelector::default(),
                policy_types: vec![PolicyType::Ingress],
                ingress: vec![PolicyRule {
                    peers: vec![],
                    ports: vec![tcp(80)],
                }],
                egress: vec![],
            }),
            Object::Namespace(Namespace::new("x", labels(&[("ns", "x")]))),
        ]
    );
}

#[test]
fn policy_types_default_as_kubernetes_does() {
    use PolicyType::{Egress, Ingress};
    let cases: &[(&str, &[PolicyType])] = &[
        ("{podSelector: {}}", &[Ingress]),
        ("{}", &[Ingress]),
        ("{podSelector: {}, ingress: [{}]}", &[Ingress]),
        ("{podSelector: {}, egress: [{}]}", &[Ingress, Egress]),
        // Kubernetes adds Egress only for a non-empty egress list.
        ("{podSelector: {}, egress: []}", &[Ingress]),
        ("{podSelector: {}, egress: null}", &[Ingress]),
        (
            "{podSelector: {}, policyTypes: [], egress: [{}]}",
            &[Ingress, Egress],
        ),
        ("{podSelector: {}, policyTypes: [Egress]}", &[Egress]),
        (
            "{podSelector: {}, policyTypes: [Egress], ingress: [{}]}",
            &[Egress],
        ),
        (
            "{podSelector: {}, policyTypes: [Egress, Ingress]}",
            &[Ingress, Egress],
        ),
        (
            "{podSelector: {}, policyTypes: [Ingress], egress: [{}]}",
            &[Ingress],
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(one_policy(&np(spec)).policy_types, *want, "{spec}");
    }
}

#[test]
fn policy_forms_that_are_accepted() {
    type Check = fn(&NetworkPolicy) -> bool;
    let cases: &[(&str, Check)] = &[
        // Empty from/to/ports mean all; null is absent.
        ("{ingress: [{from: [], ports: []}]}", |p| {
            p.ingress == [PolicyRule::default()]
        }),
        ("{ingress: [{from: null, ports: null}]}", |p| {
            p.ingress == [PolicyRule::default()]
        }),
        (
            "{podSelector: null, ingress: [{from: [{podSelector: null, namespaceSelector: {}}]}]}",
            |p| {
                p.pod_selector.is_empty()
                    && p.ingress[0].peers[0].pod_selector.is_none()
                    && p.ingress[0].peers[0].namespace_selector == Some(LabelSelector::default())
            },
        ),
        // Host bits of a CIDR are cleared, as Kubernetes reads it.
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.1.2.3/16, except: [10.1.9.9/24]}}]}]}",
            |p| {
                let b = p.ingress[0].peers[0].ip_block.as_ref().expect("block");
                b.cidr.to_string() == "10.1.0.0/16" && b.except[0].to_string() == "10.1.9.0/24"
            },
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 'fd00::/48', except: ['fd00:0:0:1::/64']}}]}]}",
            |p| {
                p.ingress[0].peers[0]
                    .ip_block
                    .as_ref()
                    .is_some_and(|b| !b.cidr.is_ipv4())
            },
        ),
        ("{ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]}", |p| {
            p.ingress[0].peers[0]
                .ip_block
                .as_ref()
                .is_some_and(|b| b.cidr.prefix() == 0)
        }),
        // A port without a number is every port of its protocol; endPort == port is one port.
        (
            "{ingress: [{ports: [{}, {protocol: UDP}, {port: 80, endPort: 80}]}]}",
            |p| {
                p.ingress[0].ports
                    == [
                        PolicyPort {
                            protocol: L4Protocol::Tcp,
                            port: None,
                            end_port: None,
                        },
                        PolicyPort {
                            protocol: L4Protocol::Udp,
                            port: None,
                            end_port: None,
                        },
                        PolicyPort {
                            protocol: L4Protocol::Tcp,
                            port: Some(80),
                            end_port: Some(80),
                        },
                    ]
            },
        ),
        ("{ingress: [{ports: [{port: 1, endPort: 65535}]}]}", |p| {
            p.ingress[0].ports[0].end_port == Some(65535)
        }),
        (
            "{podSelector: {matchLabels: {app.kubernetes.io/name: web, empty: ''}}}",
            |p| {
                p.pod_selector.match_labels
                    == labels(&[("app.kubernetes.io/name", "web"), ("empty", "")])
            },
        ),
        (
            "{podSelector: {matchLabels: {}, matchExpressions: []}}",
            |p| p.pod_selector.is_empty(),
        ),
    ];
    for (spec, check) in cases {
        let p = one_policy(&np(spec));
        assert!(check(&p), "{spec}: {p:?}");
    }
    // The default namespace, and names that are subdomains.
    let p = one_policy(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a.b-c.0}\nspec: {}\n",
    );
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str()),
        ("default", "a.b-c.0")
    );
}

#[test]
fn every_policy_refusal_names_its_field() {
    let cases: &[(&str, &str)] = &[
        // spec
        ("[podSelector]", "spec"),
        ("{podselector: {}}", "spec.podselector"),
        ("{podSelector: {}, status: {}}", "spec.status"),
        // selectors
        ("{podSelector: [a]}", "spec.podSelector"),
        ("{podSelector: {app: web}}", "spec.podSelector.app"),
        ("{podSelector: {matchLabels: [app]}}", "spec.podSelector.matchLabels"),
        ("{podSelector: {matchLabels: {app: 1}}}", "spec.podSelector.matchLabels[app]"),
        ("{podSelector: {matchLabels: {'': x}}}", "spec.podSelector.matchLabels"),
        ("{podSelector: {matchExpressions: {key: a}}}", "spec.podSelector.matchExpressions"),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: in, values: [b]}]}}",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Gt, values: ['1']}]}}",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, values: [b]}]}}",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            "{podSelector: {matchExpressions: [{operator: Exists}]}}",
            "spec.podSelector.matchExpressions[0].key",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: In}]}}",
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: NotIn, values: []}]}}",
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}",
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: DoesNotExist, values: [b]}]}}",
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: In, values: [1]}]}}",
            "spec.podSelector.matchExpressions[0].values[0]",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: In, values: b}]}}",
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Exists, value: b}]}}",
            "spec.podSelector.matchExpressions[0].value",
        ),
        // policyTypes
        ("{policyTypes: Ingress}", "spec.policyTypes"),
        ("{policyTypes: [ingress]}", "spec.policyTypes[0]"),
        ("{policyTypes: [Ingress, Both]}", "spec.policyTypes[1]"),
        ("{policyTypes: [Ingress, Ingress]}", "spec.policyTypes[1]"),
        ("{policyTypes: [1]}", "spec.policyTypes[0]"),
        // rules
        ("{ingress: {from: []}}", "spec.ingress"),
        ("{ingress: [null]}", "spec.ingress[0]"),
        ("{ingress: [{to: []}]}", "spec.ingress[0].to"),
        ("{egress: [{from: []}]}", "spec.egress[0].from"),
        ("{ingress: [{from: {podSelector: {}}}]}", "spec.ingress[0].from"),
        ("{egress: [{}, {to: [7]}]}", "spec.egress[1].to[0]"),
        // peers
        ("{ingress: [{from: [{}]}]}", "spec.ingress[0].from[0]"),
        ("{ingress: [{from: [{podSelector: null}]}]}", "spec.ingress[0].from[0]"),
        ("{ingress: [{from: [{pods: {}}]}]}", "spec.ingress[0].from[0].pods"),
        (
            "{ingress: [{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]}",
            "spec.ingress[0].from[0].ipBlock",
        ),
        (
            "{egress: [{to: [{namespaceSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]}",
            "spec.egress[0].to[0].ipBlock",
        ),
        (
            "{ingress: [{from: [{namespaceSelector: {matchLabels: {ns: [y]}}}]}]}",
            "spec.ingress[0].from[0].namespaceSelector.matchLabels[ns]",
        ),
        // ipBlock
        ("{ingress: [{from: [{ipBlock: {}}]}]}", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("{ingress: [{from: [{ipBlock: 10.0.0.0/8}]}]}", "spec.ingress[0].from[0].ipBlock"),
        ("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0}}]}]}", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("{ingress: [{from: [{ipBlock: {cidr: nope/8}}]}]}", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("{ingress: [{from: [{ipBlock: {cidr: 10}}]}]}", "spec.ingress[0].from[0].ipBlock.cidr"),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [bad]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: 10.1.0.0/16}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[1]",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, exclude: []}}]}]}",
            "spec.ingress[0].from[0].ipBlock.exclude",
        ),
        // ports
        ("{ingress: [{ports: 80}]}", "spec.ingress[0].ports"),
        ("{ingress: [{ports: [80]}]}", "spec.ingress[0].ports[0]"),
        ("{ingress: [{ports: [{port: http}]}]}", "spec.ingress[0].ports[0].port"),
        ("{ingress: [{ports: [{port: '80'}]}]}", "spec.ingress[0].ports[0].port"),
        ("{ingress: [{ports: [{port: 0}]}]}", "spec.ingress[0].ports[0].port"),
        ("{ingress: [{ports: [{port: 65536}]}]}", "spec.ingress[0].ports[0].port"),
        ("{ingress: [{ports: [{port: 80.5}]}]}", "spec.ingress[0].ports[0].port"),
        ("{ingress: [{ports: [{port: 80, protocol: tcp}]}]}", "spec.ingress[0].ports[0].protocol"),
        ("{ingress: [{ports: [{port: 80, protocol: ICMP}]}]}", "spec.ingress[0].ports[0].protocol"),
        ("{ingress: [{ports: [{port: 80, protocol: 6}]}]}", "spec.ingress[0].ports[0].protocol"),
        ("{egress: [{ports: [{endPort: 90}]}]}", "spec.egress[0].ports[0].endPort"),
        ("{egress: [{ports: [{port: 90, endPort: 80}]}]}", "spec.egress[0].ports[0].endPort"),
        ("{egress: [{ports: [{port: 80, endPort: 70000}]}]}", "spec.egress[0].ports[0].endPort"),
        ("{egress: [{ports: [{port: 80, endPort: '90'}]}]}", "spec.egress[0].ports[0].endPort"),
        ("{egress: [{ports: [{port: http, endPort: 90}]}]}", "spec.egress[0].ports[0].port"),
        ("{egress: [{ports: [{port: 80, hostPort: 80}]}]}", "spec.egress[0].ports[0].hostPort"),
    ];
    for (spec, path) in cases {
        let (field, message) = field_error(&np(spec));
        assert_eq!(field, *path, "{spec}: {message}");
        assert!(
            message.starts_with(&format!("document 1 (NetworkPolicy p): {path}: ")),
            "{spec}: {message}"
        );
    }
    // The messages the brief promises.
    let (_, message) = field_error(&np("{ingress: [{ports: [{port: http}]}]}"));
    assert_eq!(
        message,
        "document 1 (NetworkPolicy p): spec.ingress[0].ports[0].port: named ports are not supported (pods carry no container ports here)"
    );
    let (_, message) = field_error(&np(
        "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
    ));
    assert!(
        message.ends_with("10.1.0.0/24 is not strictly inside cidr 10.0.0.0/16"),
        "{message}"
    );

    let head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";
    let objects: &[(String, &str)] = &[
        (format!("{head}metadata: {{name: p}}\n"), "spec"),
        (
            format!("{head}metadata: {{name: p}}\nspec: {{}}\nextra: 1\n"),
            "extra",
        ),
        (
            format!("{head}metadata: {{name: P}}\nspec: {{}}\n"),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: p..q}}\nspec: {{}}\n"),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: p.}}\nspec: {{}}\n"),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: p_q}}\nspec: {{}}\n"),
            "metadata.name",
        ),
        (
            format!(
                "{head}metadata: {{name: {}}}\nspec: {{}}\n",
                "a".repeat(254)
            ),
            "metadata.name",
        ),
        (
            format!("{head}metadata: {{name: p, namespace: X}}\nspec: {{}}\n"),
            "metadata.namespace",
        ),
    ];
    for (text, path) in objects {
        let (field, message) = field_error(text);
        assert_eq!(field, *path, "{text}: {message}");
    }
}

#[test]
fn namespaces_carry_their_name_label() {
    let ns = |meta: &str, rest: &str| match objects(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {meta}\n{rest}"
    ))
    .as_slice()
    {
        [Object::Namespace(n)] => n.clone(),
        other => panic!("{meta}: {other:?}"),
    };
    assert_eq!(ns("{name: x}", ""), Namespace::implicit("x"));
    assert_eq!(
        ns(
            "{name: x, labels: {ns: x, kubernetes.io/metadata.name: x}}",
            ""
        ),
        Namespace::new("x", labels(&[("ns", "x")]))
    );
    // Not namespaced: metadata.namespace is ignored, as Kubernetes does.
    assert_eq!(
        ns(
            "{name: x, namespace: y}",
            "spec: {finalizers: [kubernetes]}\nstatus: {phase: Active}\n"
        ),
        Namespace::implicit("x")
    );
    assert_eq!(
        ns("{name: 0x, labels: null}", ""),
        Namespace::implicit("0x")
    );

    let cases: &[(&str, &str)] = &[
        (
            "metadata: {name: x, labels: {kubernetes.io/metadata.name: y}}\n",
            "metadata.labels[kubernetes.io/metadata.name]",
        ),
        ("metadata: {name: x, labels: [ns]}\n", "metadata.labels"),
        (
            "metadata: {name: x, labels: {ns: 1}}\n",
            "metadata.labels[ns]",
        ),
        ("metadata: {name: x.y}\n", "metadata.name"),
        ("metadata: {name: X}\n", "metadata.name"),
        (
            "metadata: {name: x}\nspec: {finalizers: [kubernetes], other: 1}\n",
            "spec.other",
        ),
        ("metadata: {name: x}\nspec: [a]\n", "spec"),
        ("metadata: {name: x}\ndata: {}\n", "data"),
    ];
    for (rest, path) in cases {
        let text = format!("apiVersion: v1\nkind: Namespace\n{rest}");
        let (field, message) = field_error(&text);
        assert_eq!(field, *path, "{text}: {message}");
        assert!(message.starts_with("document 1 (Namespace "), "{message}");
    }
}

#[test]
fn refs_and_duplicates_of_the_new_kinds() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, namespace: ignored}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {whatever: 1}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: p, namespace: x}\n";
    assert_eq!(
        parse_refs(text),
        Ok(vec![
            ObjectRef {
                kind: KIND_NAMESPACE.into(),
                namespace: String::new(),
                name: "x".into()
            },
            ObjectRef {
                kind: KIND_NETWORK_POLICY.into(),
                namespace: "x".into(),
                name: "p".into()
            },
            ObjectRef {
                kind: KIND_SERVICE.into(),
                namespace: "x".into(),
                name: "p".into()
            },
        ]),
        "a policy and a service may share a name; refs read only the identity"
    );
    let policy = np("{}");
    let twice = format!(
        "{policy}---\n{}",
        policy.replace("namespace: x", "namespace: x ")
    );
    let e = parse_objects(&twice).expect_err("duplicate");
    assert_eq!(
        e.to_string(),
        "document 2 (NetworkPolicy p): NetworkPolicy x/p is defined twice (first in document 1 (NetworkPolicy p))"
    );
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
    let e = parse_refs(&format!(
        "{ns}---\n{}",
        ns.replace("{name: x}", "{name: x, namespace: q}")
    ))
    .expect_err("duplicate");
    assert!(
        e.to_string().contains("Namespace x is defined twice"),
        "{e}"
    );
    // One bad policy fails a file of good services.
    let text = format!(
        "{}---\n{}",
        svc("{ports: [{port: 80}]}"),
        np("{ingress: [{ports: [{port: http}]}]}")
    );
    assert!(parse_objects(&text).is_err());
}

#[test]
fn mutated_policies_never_panic() {
    const INTERESTING: &[u8] = b":-[]{}\"'\n #&*!|>?,./0123456789aZ\t%@\\~";
    let seeds = [POLICIES, EXPORTED_POLICY];
    let mut rng = Rng(0x0bad_cafe_f00d);
    for round in 0..600 {
        let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes[at] = rng.next() as u8,
            }
        }
        exercise(&String::from_utf8_lossy(&bytes));
    }
    for seed in [POLICIES, EXPORTED_POLICY] {
        for (at, _) in seed.char_indices() {
            exercise(&seed[..at]);
        }
    }
}
