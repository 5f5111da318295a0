//! Integration and property tests of malaka-runtime: one binary, a module per component.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod bus;
mod bus_props;
mod pipeline;
mod pool_autoscale;
mod pool_props;
