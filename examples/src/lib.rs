//! Shared code of the examples: [`product`], the product server of
//! `embed_in_axum`, which its test starts too.

pub mod product;
