//! The gateway's own HTTP/1.1 server side, for the proxy listeners: request heads parsed
//! without copying, request bodies read (length or chunked) from the connection, response
//! heads written with their framing, and upgrades handed over. The connection itself is served
//! by `server::h1`; HTTP/2, and the admin, readiness and metrics ports, stay with hyper.

pub mod body;
pub mod encode;
pub mod fields;
pub mod head;
pub mod scan;
pub mod upgrade;

pub use body::RequestBody;
pub use fields::Fields;
pub use upgrade::OnUpgrade;
