package workflows

// PlanWaves exposes planWaves to the black-box tests.
var PlanWaves = planWaves
