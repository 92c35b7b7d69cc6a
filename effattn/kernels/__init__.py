"""The engines the plugins share: the mask conventions (`masks`), the chunked plain-PyTorch
engine (`chunked`) and its log-sum-exp merge of pieces (`merge`), compiled FlexAttention
(`flex`), and the caches and step helpers of decoding (`caches`). Kernels know no plugin and no
registry."""
