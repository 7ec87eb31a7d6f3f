//! End-to-end tests: a real gate on a loopback port in front of a real simulated API
//! server, driven over real sockets, plus the real clients (kubectl, the Python
//! `kubernetes` client) and the real binary. One test binary keeps link time down.

mod abuse;
mod bao;
mod caddy;
mod catalog;
mod cli;
mod clients;
mod deploy;
mod eventually;
mod faults;
mod gate;
mod ingress;
mod jwt;
mod lifecycle;
mod nginx;
mod observability;
mod openbao;
mod real;
mod revocation;
mod signatures;
mod support;
mod tls;
