//! Shared code of the examples: [`product`], the product server of
//! `embed_in_axum`, which its test starts too.

pub mod product;

/// The README's Rust examples, compiled as doc tests (`cargo test --doc -p
/// examples`): the README is what a developer follows first, so what it
/// shows must build against the crates as they are.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
