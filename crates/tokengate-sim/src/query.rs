//! What a list or watch request asks for: its query parameters (`ListOptions`) and the
//! shape of the answer it accepts (whole objects or metadata only).
//!
//! Responsible for: reading `watch`, `resourceVersion`, `resourceVersionMatch`, `limit`,
//! `continue`, the selectors, `timeoutSeconds`, `allowWatchBookmarks` and
//! `sendInitialEvents` as the API server reads them (booleans as Go's `ParseBool`),
//! refusing what it refuses (with its `ListOptions` validation wording) and what the sim
//! does not implement (selectors, `continue`); and content negotiation of `Accept`:
//! `application/json`, or `as=PartialObjectMetadataList` (lists) /
//! `as=PartialObjectMetadata` (watches) in `meta.k8s.io/v1`.
//!
//! Not responsible for: answering (see `watch`).

use axum::http::{HeaderMap, header};
use serde::Serialize;
use serde_json::Value;

use super::status::ApiError;

/// The group and version of the metadata-only shapes.
pub(crate) const META_API_VERSION: &str = "meta.k8s.io/v1";

/// The list/watch query parameters the sim reads; others are ignored, as the API server
/// ignores parameters it does not know.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub(crate) watch: bool,
    pub(crate) resource_version: Option<String>,
    pub(crate) resource_version_match: Option<String>,
    pub(crate) continue_token: Option<String>,
    pub(crate) label_selector: Option<String>,
    pub(crate) field_selector: Option<String>,
    pub(crate) timeout_seconds: Option<u64>,
    pub(crate) allow_watch_bookmarks: bool,
    pub(crate) send_initial_events: Option<bool>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let mut query = Query::default();
        // `form_urlencoded` skips empty pairs, as in kube's `…/pods?&watch=true`.
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let text = || Some(value.to_string()).filter(|v| !v.is_empty());
            match &*key {
                "watch" => query.watch = parse_bool(&key, &value)?,
                "resourceVersion" => query.resource_version = text(),
                "resourceVersionMatch" => query.resource_version_match = text(),
                "continue" => query.continue_token = text(),
                "labelSelector" => query.label_selector = text(),
                "fieldSelector" => query.field_selector = text(),
                "allowWatchBookmarks" => query.allow_watch_bookmarks = parse_bool(&key, &value)?,
                "sendInitialEvents" => {
                    query.send_initial_events = Some(parse_bool(&key, &value)?);
                }
                "timeoutSeconds" => {
                    query.timeout_seconds = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "invalid value {value:?} for timeoutSeconds: not a whole number of seconds"
                        ))
                    })?);
                }
                // `limit` is honoured by answering everything in one page.
                _ => {}
            }
        }
        Ok(query)
    }

    /// The API server's `ListOptions` validation, as far as the sim serves it.
    pub(crate) fn validate(&self) -> Result<(), ApiError> {
        for (name, selector) in [
            ("labelSelector", &self.label_selector),
            ("fieldSelector", &self.field_selector),
        ] {
            if let Some(selector) = selector {
                return Err(ApiError::bad_request(format!(
                    "{name} {selector:?} is not supported by the simulated API server"
                )));
            }
        }
        if self.continue_token.is_some() {
            return Err(ApiError::bad_request(
                "continue key is not valid: the simulated API server answers every list in one page",
            ));
        }
        let invalid = |field: &str, detail: &str| {
            ApiError::invalid("ListOptions.meta.k8s.io", "", field, detail)
        };
        let rv_match = self.resource_version_match.as_deref();
        if self.watch {
            match (self.send_initial_events, rv_match) {
                (None, Some(_)) => Err(invalid(
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                )),
                (Some(_), m) if m != Some("NotOlderThan") => Err(invalid(
                    "resourceVersionMatch",
                    &format!(
                        "Unsupported value: {:?}: supported values: \"NotOlderThan\"",
                        m.unwrap_or_default()
                    ),
                )),
                (Some(true), _) if !self.allow_watch_bookmarks => Err(invalid(
                    "allowWatchBookmarks",
                    "Required value: allowWatchBookmarks must be set to true when sendInitialEvents is true",
                )),
                _ => Ok(()),
            }
        } else if self.send_initial_events.is_some() {
            Err(invalid(
                "sendInitialEvents",
                "Forbidden: sendInitialEvents is forbidden for list",
            ))
        } else {
            match (rv_match, self.resource_version.as_deref()) {
                (None, _) | (Some("NotOlderThan"), Some(_)) => Ok(()),
                (Some("Exact"), Some("0")) => Err(invalid(
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                )),
                (Some(_), None) => Err(invalid(
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                )),
                (Some("Exact"), Some(_)) => Ok(()),
                (Some(other), Some(_)) => Err(invalid(
                    "resourceVersionMatch",
                    &format!(
                        "Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                    ),
                )),
            }
        }
    }

    /// `resourceVersion` as a number; `None` when unset or `"0"` ("any").
    pub(crate) fn resource_version(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(rv) => rv
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}"))),
        }
    }
}

/// A boolean query parameter, read as Go's `strconv.ParseBool` reads it.
fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "invalid value {value:?} for {key}: strconv.ParseBool: parsing {value:?}: invalid syntax"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Content negotiation

/// What the client asked to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Whole objects (`application/json`).
    Full,
    /// `PartialObjectMetadata(List)` in `meta.k8s.io/v1`: metadata only.
    Metadata,
}

impl Shape {
    /// Picks the first media range of `Accept` the sim can serve, as the API server
    /// does: JSON, whole or (with `as=PartialObjectMetadata` for a watch,
    /// `as=PartialObjectMetadataList` for a list, `g=meta.k8s.io`, `v=v1`) metadata only.
    /// Other `as=` transformations (`Table`) and other media types are skipped.
    pub(crate) fn negotiate(headers: &HeaderMap, watch: bool) -> Result<Shape, ApiError> {
        let ranges: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        if ranges.is_empty() {
            return Ok(Shape::Full);
        }
        let wanted = if watch {
            "PartialObjectMetadata"
        } else {
            "PartialObjectMetadataList"
        };
        for range in ranges {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            if !matches!(media, "application/json" | "application/*" | "*/*") {
                continue;
            }
            let (mut as_kind, mut group, mut version) = (None, None, None);
            for param in parts {
                if let Some((key, value)) = param.split_once('=') {
                    let value = value.trim().trim_matches('"');
                    match key.trim() {
                        "as" => as_kind = Some(value),
                        "g" => group = Some(value),
                        "v" => version = Some(value),
                        _ => {}
                    }
                }
            }
            match as_kind {
                None => return Ok(Shape::Full),
                Some(kind)
                    if kind == wanted && group == Some("meta.k8s.io") && version == Some("v1") =>
                {
                    return Ok(Shape::Metadata);
                }
                // The API server negotiates these, then fails the transformation.
                Some(kind @ ("PartialObjectMetadata" | "PartialObjectMetadataList")) => {
                    let actual = if watch { "is not a list" } else { "is a list" };
                    return Err(ApiError::not_acceptable(format!(
                        "you requested {kind}, but the requested object {actual}"
                    )));
                }
                Some(_) => {}
            }
        }
        Err(ApiError::not_acceptable(
            "only the following media types are accepted: application/json, \
             application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1 (lists), \
             application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1 (watches)",
        ))
    }

    /// The `Content-Type` of a list in this shape.
    pub(crate) fn list_content_type(self) -> &'static str {
        match self {
            Shape::Full => "application/json",
            Shape::Metadata => "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        }
    }

    /// The `Content-Type` of a watch in this shape.
    pub(crate) fn watch_content_type(self) -> &'static str {
        match self {
            Shape::Full => "application/json",
            Shape::Metadata => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        }
    }
}

/// An object's metadata as `PartialObjectMetadata`.
#[derive(Serialize)]
pub(crate) struct Partial<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a Value,
}

impl<'a> Partial<'a> {
    pub(crate) fn of(object: &'a Value) -> Partial<'a> {
        Partial {
            api_version: META_API_VERSION,
            kind: "PartialObjectMetadata",
            metadata: &object["metadata"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, StatusCode};

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn kube_metadata_requests_get_metadata_and_kubectl_gets_json() {
        // What kube 5's `list_metadata` and `watch_metadata` send.
        let list = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        let watch = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
        assert_eq!(
            Shape::negotiate(&accept(list), false).ok(),
            Some(Shape::Metadata)
        );
        assert_eq!(
            Shape::negotiate(&accept(watch), true).ok(),
            Some(Shape::Metadata)
        );
        let fallback = format!("{watch},application/json");
        assert_eq!(
            Shape::negotiate(&accept(&fallback), true).ok(),
            Some(Shape::Metadata)
        );
        // kubectl asks for a Table first.
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        assert_eq!(
            Shape::negotiate(&accept(kubectl), false).ok(),
            Some(Shape::Full)
        );
        assert_eq!(
            Shape::negotiate(&HeaderMap::new(), true).ok(),
            Some(Shape::Full)
        );
        let err = Shape::negotiate(&accept(watch), false).expect_err("a list");
        assert_eq!(err.code, StatusCode::NOT_ACCEPTABLE);
        let err = Shape::negotiate(&accept("application/vnd.kubernetes.protobuf"), false)
            .expect_err("protobuf");
        assert_eq!(err.code, StatusCode::NOT_ACCEPTABLE);
    }

    #[test]
    fn kube_watcher_queries_parse_and_validate() {
        // kube 5's watcher: the list, then the watch from the list's version.
        let list = Query::parse(Some("&limit=500")).expect("list");
        assert!(!list.watch);
        list.validate().expect("valid");
        let watch = Query::parse(Some(
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=12",
        ))
        .expect("watch");
        assert!(watch.watch && watch.allow_watch_bookmarks);
        assert_eq!(watch.timeout_seconds, Some(290));
        assert_eq!(watch.resource_version().expect("rv"), Some(12));
        watch.validate().expect("valid");
        // Its streaming-list mode.
        let streaming = Query::parse(Some(
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0",
        ))
        .expect("streaming");
        streaming.validate().expect("valid");
        assert_eq!(streaming.resource_version().expect("rv"), None);
        // `ListSemantic::Any` without a page size.
        let any = Query::parse(Some("&resourceVersion=0&resourceVersionMatch=NotOlderThan"))
            .expect("any");
        any.validate().expect("valid");
    }

    #[test]
    fn unsupported_or_invalid_queries_are_refused() {
        let refused = |raw: &str| {
            Query::parse(Some(raw))
                .and_then(|q| q.validate().and_then(|()| q.resource_version().map(drop)))
                .expect_err(raw)
                .code
        };
        assert_eq!(refused("labelSelector=app%3Dweb"), StatusCode::BAD_REQUEST);
        assert_eq!(
            refused("fieldSelector=metadata.name%3Dx"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(refused("continue=abc"), StatusCode::BAD_REQUEST);
        assert_eq!(refused("watch=maybe"), StatusCode::BAD_REQUEST);
        assert_eq!(refused("resourceVersion=abc"), StatusCode::BAD_REQUEST);
        assert_eq!(
            refused("resourceVersionMatch=NotOlderThan"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            refused("watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "streaming lists need bookmarks"
        );
        assert_eq!(
            refused("watch=1&resourceVersion=3&resourceVersionMatch=NotOlderThan"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            refused("sendInitialEvents=true"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        // Empty selectors are no selectors.
        Query::parse(Some("labelSelector=&fieldSelector="))
            .expect("parse")
            .validate()
            .expect("valid");
    }
}
