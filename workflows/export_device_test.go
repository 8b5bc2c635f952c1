package workflows

// FleetShards unpacks the open shards' records a sharded rollout carries over continue-as-new.
func FleetShards(st *RolloutState) ([]ShardRecord, error) {
	var fl fleet
	if err := unpackJSON(st.PackedFleet, &fl); err != nil {
		return nil, err
	}
	return fl.Shards, nil
}
