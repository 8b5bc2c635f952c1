package workflows

// PackRows and UnpackRows expose the continue-as-new packing.
var (
	PackRows   = packRows
	UnpackRows = unpackRows
)

// ShardsChange is the change ID of sharded rollouts, for tests that pin the older shape.
const ShardsChange = shardsChange
