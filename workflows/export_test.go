package workflows

// PlanWaves exposes planWaves to the black-box tests.
var PlanWaves = planWaves

// PackRows and UnpackRows expose the continue-as-new packing.
var (
	PackRows   = packRows
	UnpackRows = unpackRows
)
