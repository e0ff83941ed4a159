"""The bottom layer: model pieces every task shares (the dropout-LSTM backbone, decoding, text
metrics, the mixture of an ensemble) and the errors every layer raises. Nothing here imports from
`tasks`, `datamodules` or `benchmark`."""
