//! What a client sees on one kept-alive HTTP/1.1 connection, over raw TCP:
//! pipelined requests, the gate's own routes and forwarded ones mixed,
//! `Connection: close`, `HEAD`, every framing of an upstream answer (from
//! the recording upstream and from a raw one written here), header hygiene
//! with odd header-name case, slow and idle clients, a client that hangs up
//! while its answer is awaited, and an upstream that is down.
//!
//! These guard any way the gate reads requests and writes answers (hyper,
//! or a path of its own for simple requests): each exchange checks the
//! answer in full and the next one on the same connection proves that the
//! previous answer ended exactly where its framing said.
//!
//! `conn` is the client (a raw connection reading answers one by one),
//! `raw_upstream` an upstream of canned bytes; the cases are in
//! `keep_alive`, `answers`, `requests`, `bodies` and `clients`.

mod answers;
mod bodies;
mod clients;
pub(super) mod conn;
pub(super) mod coverage;
mod keep_alive;
mod raw_upstream;
mod requests;
