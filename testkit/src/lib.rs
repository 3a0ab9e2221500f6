//! Mock OpenAI chat-completions / Anthropic Messages HTTP server (with both providers' batch
//! APIs) for tests and benchmarks, and a
//! mock Hugging Face Hub for uploads ([`MockHub`]).
//!
//! ```no_run
//! # async fn demo() {
//! use testkit::{Fault, FaultPlan, MockConfig, MockServer};
//! let server = MockServer::start(
//!     MockConfig::new()
//!         .api_key("sk-test")
//!         .rpm(600)
//!         .faults(FaultPlan::none().marker_times("FLAKY", Fault::Status(500), 2)),
//! )
//! .await;
//! let base = server.base_url(); // http://127.0.0.1:PORT/v1
//! # let _ = base;
//! assert_eq!(server.stats().received, 0);
//! # }
//! ```

mod batch;
mod config;
mod fault;
mod hub;
mod limiter;
mod server;
mod stats;

pub use batch::BatchSnapshot;
pub use config::{Api, ChatMessage, ChatView, MockConfig, Responder, default_reply};
pub use fault::{Fault, FaultPlan, MarkerFault, RandomFaults};
pub use hub::{HubCommit, HubRequest, MockHub};
pub use server::{MockBody, MockError, MockServer};
pub use stats::{RecordedRequest, Stats, max_in_any_window, per_second_histogram};
