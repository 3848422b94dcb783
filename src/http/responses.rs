//! The error responses several operations share (`#/components/responses/NAME`, referred
//! to by `response = NAME` in `#[utoipa::path]`). Here, apart from the document
//! ([`super::openapi`]) that gathers every route's types, so the routes and the document
//! do not import each other.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{ToResponse, ToSchema};

use crate::error::ErrorBody;

/// The name of the shared `Retry-After` header (`#/components/headers/RetryAfter`).
pub const RETRY_AFTER: &str = "RetryAfter";

/// An error response: `description` and the `Error` body.
fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
    )
}

/// Declares error responses shared by several operations (`#/components/responses/NAME`,
/// referred to by `response = NAME` in `#[utoipa::path]`): a unit type each, with its
/// description and, optionally, a function that adds headers.
macro_rules! error_responses {
    ($($name:ident: $description:literal $(, $headers:expr)?;)*) => {$(
        #[doc = concat!("The shared response: ", $description)]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                let response = error_response($description);
                $(let response = $headers(response);)?
                (stringify!($name), response.build().into())
            }
        }
    )*};
}

/// Adds the shared `Retry-After` header.
fn retry_after(r: ResponseBuilder) -> ResponseBuilder {
    r.header_ref(
        "Retry-After",
        Ref::new(format!("#/components/headers/{RETRY_AFTER}")),
    )
}

/// Adds `WWW-Authenticate`, as a 401 sends it.
fn www_authenticate(r: ResponseBuilder) -> ResponseBuilder {
    r.header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .description(Some("`Bearer realm=\"celeriac-admin\"`."))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build(),
    )
}

error_responses! {
    BadRequest: "`invalid_json`, `unsupported_content_type`, or `invalid_parameter` (an unknown query parameter, or a bad `wait`).";
    LengthRequired: "`length_required`: the body came without a `content-length`.";
    PayloadTooLarge: "`payload_too_large`: the body is over `server.body_limit_bytes`.";
    QueueFull: "`queue_full`: the pool's queue holds `queue_capacity` tasks (with a broker, counted in Redis for all nodes); refused at once.", retry_after;
    Unavailable: "`shutting_down` (draining for shutdown), `no_live_worker` (every worker of the pool failed to start and its restart budget is spent; a resize tries again), or, with a broker, `broker_unavailable` (Redis is unreachable).", retry_after;
    TaskNotFound: "`task_not_found`: the id was never issued, or its record expired (`results.ttl_seconds`).";
    Unauthorized: "`unauthorized`: missing or wrong bearer token.", www_authenticate;
    AdminDisabled: "`admin_disabled`: no admin token is configured.";
}
