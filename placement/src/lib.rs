//! ringkv placement service: grows into the store/region registry and scheduler (see issue 3).
