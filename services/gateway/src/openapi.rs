//! The OpenAPI 3.1 document, generated from the route table (`routes::table`).

use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Schemas named by the table; a name not listed here is documented as a free object.
fn schemas() -> Value {
    let s = |props: Value| json!({"type": "object", "properties": props});
    let str_ = json!({"type": "string"});
    let int = json!({"type": "integer"});
    let boolean = json!({"type": "boolean"});
    json!({
        "Error": s(json!({"error": str_, "errorDescription": str_})),
        "ValidationErrors": s(json!({"errors": {"type": "array", "items": s(json!({
            "type": str_, "value": {}, "msg": str_, "path": str_, "location": {"enum": ["body", "params", "query", "headers"]}
        }))}})),
        "Credentials": {"type": "object", "required": ["username", "password"], "properties": {"username": str_, "password": str_}},
        "Token": s(json!({"token": str_})),
        "Version": s(json!({"serviceVersion": str_, "protocolVersion": str_})),
        "Health": {"type": "object"},
        "Device": s(json!({
            "guid": str_, "hostname": {"type": ["string", "null"]}, "tags": {"type": "array", "items": str_},
            "mpsInstance": {"type": ["string", "null"]}, "connectionStatus": boolean, "mpsusername": str_,
            "tenantId": str_, "friendlyName": {"type": ["string", "null"]}, "dnsSuffix": {"type": ["string", "null"]},
            "lastConnected": {"type": ["string", "null"], "format": "date-time"},
            "lastSeen": {"type": ["string", "null"], "format": "date-time"},
            "lastDisconnected": {"type": ["string", "null"], "format": "date-time"},
            "deviceInfo": {"type": ["object", "null"]}
        })),
        "DeviceList": {"oneOf": [
            {"type": "array", "items": {"$ref": "#/components/schemas/Device"}},
            s(json!({"data": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}}, "totalCount": int}))
        ]},
        "DeviceBody": {"type": "object", "required": ["guid"], "properties": {
            "guid": {"type": "string", "format": "uuid"}, "hostname": str_, "friendlyName": str_,
            "tags": {"type": "array", "items": str_}, "mpsusername": str_, "deviceInfo": {"type": "object"}
        }},
        "Stats": s(json!({"totalCount": int, "connectedCount": int, "disconnectedCount": int,
            "nodes": {"type": "array", "items": s(json!({"node": str_, "connectedCount": int}))}})),
        "Strings": {"type": "array", "items": str_},
        "RedirectStatus": s(json!({"isKVMConnected": boolean, "isSOLConnected": boolean, "isIDERConnected": boolean})),
        "Success": s(json!({"success": int, "description": str_})),
        "PowerState": s(json!({"powerstate": int})),
        "Action": {"type": "object", "required": ["action"], "properties": {"action": int}},
        "BootAction": {"type": "object", "required": ["action"], "properties": {"action": int, "useSOL": boolean}},
        "ReturnValue": s(json!({"Header": {"type": "object"}, "Body": s(json!({"ReturnValue": int, "ReturnValueStr": str_}))})),
        "Capabilities": {"type": "object", "additionalProperties": int},
        "Features": s(json!({"userConsent": {"enum": ["none", "kvm", "all"]}, "redirection": boolean, "KVM": boolean, "SOL": boolean, "IDER": boolean, "optInState": int, "kvmAvailable": boolean})),
        "FeaturesBody": s(json!({"userConsent": {"enum": ["none", "kvm", "all"]}, "enableSOL": boolean, "enableIDER": boolean, "enableKVM": boolean})),
        "Status": s(json!({"status": str_})),
        "Alarm": {"type": "object", "required": ["ElementName", "StartTime"], "properties": {"ElementName": str_, "StartTime": {"type": "string", "format": "date-time"}, "Interval": int, "InstanceID": str_, "DeleteOnCompletion": boolean}},
        "AlarmName": {"type": "object", "required": ["Name"], "properties": {"Name": str_}},
        "ConsentCode": {"type": "object", "required": ["consentCode"], "properties": {"consentCode": {"type": ["integer", "string"]}}},
        "Event": s(json!({"sequence": int, "id": str_, "time": {"type": "string", "format": "date-time"}, "tenant": str_, "deviceGuid": str_, "kind": str_, "source": str_, "actor": str_, "subject": str_, "traceId": str_, "summary": str_})),
        "EventPage": s(json!({"data": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}, "next": {"type": ["string", "null"]}})),
        "EventCounts": s(json!({"bucketSeconds": int, "from": {"type": "string", "format": "date-time"}, "series": {"type": "object", "additionalProperties": {"type": "array", "items": int}}})),
        "Object": {"type": "object"},
        "Objects": {"type": "array", "items": {"type": "object"}},
        "Profile": s(json!({"profileName": str_, "activation": {"enum": ["ccmactivate", "acmactivate"]}, "amtPassword": {"type": "string", "writeOnly": true}, "generateRandomPassword": boolean, "mebxPassword": {"type": "string", "writeOnly": true}, "generateRandomMEBxPassword": boolean, "ciraConfigName": str_, "tags": {"type": "array", "items": str_}, "dhcpEnabled": boolean, "ipSyncEnabled": boolean, "localWifiSyncEnabled": boolean, "wifiConfigs": {"type": "array", "items": s(json!({"profileName": str_, "priority": int}))}, "userConsent": {"enum": ["None", "KVM", "All"]}, "iderEnabled": boolean, "kvmEnabled": boolean, "solEnabled": boolean, "tenantId": str_, "version": str_})),
        "CiraConfig": s(json!({"configName": str_, "mpsServerAddress": str_, "serverAddressFormat": int, "mpsPort": int, "username": str_, "password": {"type": "string", "writeOnly": true}, "commonName": str_, "authMethod": int, "mpsRootCertificate": str_, "proxyDetails": str_, "tenantId": str_, "version": str_})),
        "Domain": s(json!({"profileName": str_, "domainSuffix": str_, "provisioningCert": {"type": "string", "writeOnly": true}, "provisioningCertStorageFormat": str_, "provisioningCertPassword": {"type": "string", "writeOnly": true}, "expirationDate": {"type": "string", "format": "date-time"}, "tenantId": str_, "version": str_})),
        "WirelessConfig": s(json!({"profileName": str_, "authenticationMethod": int, "encryptionMethod": int, "ssid": str_, "pskPassphrase": {"type": "string", "writeOnly": true}, "linkPolicy": {"type": "array", "items": int}, "tenantId": str_, "version": str_})),
    })
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (d, _) in crate::routes::table() {
        let mut op = json!({
            "tags": [d.tag],
            "summary": d.summary,
            "operationId": format!("{}{}", d.method, d.path.replace(['/', '{', '}'], "_")),
            "responses": {},
        });
        let params: Vec<Value> = d
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(body) = d.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": reference(body)}}});
        }
        let (code, schema) = d.ok;
        let ok = if schema.is_empty() {
            json!({"description": "Success"})
        } else {
            json!({"description": "Success", "content": {"application/json": {"schema": reference(schema)}}})
        };
        let responses = op["responses"].as_object_mut().map(|r| {
            r.insert(code.to_string(), ok);
            r.insert("400".into(), json!({"description": "Invalid input", "content": {"application/json": {"schema": {"oneOf": [reference("ValidationErrors"), reference("Error")]}}}}));
            if d.auth {
                r.insert("401".into(), json!({"description": "No or a bad bearer token", "content": {"application/json": {"schema": reference("Error")}}}));
            }
            r.insert("404".into(), json!({"description": "Unknown (or another tenant's) device or object", "content": {"application/json": {"schema": reference("Error")}}}));
        });
        debug_assert!(responses.is_some());
        if !d.auth {
            op["security"] = json!([]);
        }
        if let Some(item) = paths
            .entry(d.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            item.insert(d.method.to_owned(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Homeport REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Open AMT MPS and RPS REST APIs served by Homeport's gateway. Also mounted under Kong's prefixes /mps/api/v1, /mps/login/api/v1 and /rps/api/v1.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    })
}

pub async fn serve() -> Response {
    axum::Json(document()).into_response()
}
