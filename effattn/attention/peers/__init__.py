"""Other libraries' attention as plugins: each wraps one library's own code path on effattn's q,
k and v (`wraps` names it), so that it is measured beside ours on equal terms (docs/peers.md)."""
