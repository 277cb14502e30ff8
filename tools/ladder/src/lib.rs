//! Ladder diagrams of FTP sessions through ftpgate (or through the kernel's
//! FTP helper) from the lab's packet captures and the gateway's JSON log.
//! The binary (main.rs) reads the files; these modules do the work.

pub mod capture;
pub mod gatelog;
pub mod model;
pub mod render;
