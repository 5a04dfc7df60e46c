//! Empty: this package only holds kiln's integration tests (`it/`).
