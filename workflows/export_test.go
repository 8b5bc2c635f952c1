package workflows

// PackRows and UnpackRows expose the continue-as-new packing.
var (
	PackRows   = packRows
	UnpackRows = unpackRows
)
