//! placecast-load: the load tester for placecast (binary `placecast-load`) and the plain tokio
//! baseline broadcaster it is compared with (binary `placecast-baseline`).
//!
//! Layout: wire formats ([`ws`], [`batch`]), system calls ([`sys`], [`procfs`], [`signals`]),
//! the lean epoll client engine ([`engine`]) and its process fan-out ([`fleet`]), the HTTP
//! placement [`driver`], measurement ([`hist`], [`sendtable`]), the [`scenario`]s, their
//! [`report`] and [`compare`]; the synthetic event [`trace`]; and the [`baseline`] server.

pub mod abuse;
pub mod addrs;
pub mod baseline;
pub mod batch;
pub mod cli;
pub mod compare;
pub mod driver;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod fuzz;
pub mod hist;
pub mod http;
pub mod pow;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod sendtable;
pub mod session;
pub mod signals;
pub mod sys;
pub mod trace;
pub mod ws;
