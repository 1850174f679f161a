package loopai

/*
#include <stdint.h>
#include "loopai.h"
*/
import "C"

import (
	"encoding/json"
	"runtime"
	"time"
)

// RolloutState is where a canary rollout stands.
type RolloutState string

// The states of a rollout.
const (
	// RolloutInProgress: the canary serves its stage's share; decisions are pending.
	RolloutInProgress RolloutState = "in_progress"
	// RolloutPromoted: the canary was promoted; it is the active version.
	RolloutPromoted RolloutState = "promoted"
	// RolloutRolledBack: the canary was rolled back (automatically or by hand); the stable
	// version stays active and the canary is not rolled out again automatically.
	RolloutRolledBack RolloutState = "rolled_back"
	// RolloutAborted: the rollout was abandoned (superseded by a newer canary, or another
	// version was activated by hand).
	RolloutAborted RolloutState = "aborted"
)

// ArmStats are one arm's statistics over a rollout (and over its current stage).
type ArmStats struct {
	Version     uint32 `json:"version"`
	Executions  uint64 `json:"executions"`
	Errors      uint64 `json:"errors"`
	Abstains    uint64 `json:"abstains"`
	Validations uint64 `json:"validations"`
	Mismatches  uint64 `json:"mismatches"`
	// The rates are nil without data.
	ErrorRate   *float64 `json:"error_rate"`
	AbstainRate *float64 `json:"abstain_rate"`
	MatchRate   *float64 `json:"match_rate"`
	// LatencyP99Ms is the 99th percentile of execution latency (the upper bound of its
	// histogram bucket, ~19% wide), in milliseconds; nil without data.
	LatencyP99Ms     *float64 `json:"latency_p99_ms"`
	StageExecutions  uint64   `json:"stage_executions"`
	StageValidations uint64   `json:"stage_validations"`
}

// MetricComparison is one compared metric of a rollout: the rates of both arms and the
// confidence sequence for their difference, canary − stable (docs/rollout.md).
type MetricComparison struct {
	// Metric is "error_rate", "mismatch_rate" or "abstain_rate".
	Metric          string   `json:"metric"`
	StableRate      *float64 `json:"stable_rate"` // nil without data
	CanaryRate      *float64 `json:"canary_rate"` // nil without data
	DifferenceLower float64  `json:"difference_lower"`
	DifferenceUpper float64  `json:"difference_upper"`
	// Margin is how much worse the canary may be: promotion needs DifferenceUpper below it.
	Margin float64 `json:"margin"`
	// RollbackAbove: the canary is rolled back when DifferenceLower is above it.
	RollbackAbove float64 `json:"rollback_above"`
}

// RolloutEvent is one event of a rollout.
type RolloutEvent struct {
	At time.Time `json:"at"`
	// Kind is "started", "resumed", "stage_advanced", "promoted", "rolled_back" or
	// "aborted" (or "other", written by a newer libloopai).
	Kind          string  `json:"kind"`
	StableVersion uint32  `json:"stable_version"`
	CanaryVersion uint32  `json:"canary_version"`
	Stage         int     `json:"stage"`    // the stage index after the event
	Fraction      float64 `json:"fraction"` // the canary's share after the event
	Reason        string  `json:"reason"`
}

// RolloutStatus is the state of a task's rollout: the one in progress, or the last one with
// its outcome (docs/rollout.md). The fields are those of the JSON document.
type RolloutStatus struct {
	State         RolloutState `json:"state"`
	StableVersion uint32       `json:"stable_version"` // the version serving the rest
	CanaryVersion uint32       `json:"canary_version"` // the version rolled out
	Stage         int          `json:"stage"`          // index of the current stage in Stages
	Stages        []float64    `json:"stages"`         // the canary's share at each stage
	// Fraction is the canary's share now (Stages[Stage] while in progress, 1 once
	// promoted, 0 once rolled back or aborted).
	Fraction     float64            `json:"fraction"`
	StartedAt    time.Time          `json:"started_at"`
	Stable       ArmStats           `json:"stable"`
	Canary       ArmStats           `json:"canary"`
	Comparisons  []MetricComparison `json:"comparisons"`
	Decision     string             `json:"decision"`      // the reason of the last decision
	RecentEvents []RolloutEvent     `json:"recent_events"` // oldest first
	// JSON is the whole document as libloopai serialized it.
	JSON json.RawMessage `json:"-"`
}

// BeginRollout starts a canary rollout of the installed version: it serves the first
// stage's share of executions (rollout.stages, 10% by default, sticky per routing key) next
// to the active version, and is promoted stage by stage or rolled back by the runtime's
// sequential test (docs/rollout.md). A rollout of another version in progress is
// superseded; beginning the rollout of the canary in progress does nothing. With
// rollout.enabled: false the version is activated at once.
//
// Errors: ErrArtifact when the version is not installed, is corrupt, is the active
// version, or was rolled back before; ErrProgram or ErrSchema when it does not compile;
// ErrIO when rollout.json cannot be written.
func (r *Runtime) BeginRollout(version uint32) error {
	ptr, err := r.handle()
	if err != nil {
		return err
	}
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_begin_rollout(ptr, C.uint32_t(version), &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	return takeError(status, cerr)
}

// Promote finishes the rollout in progress now: its canary becomes the active version and
// serves every execution. It returns that version. Errors: ErrArtifact when no rollout is
// in progress or the activation failed (then the rollout goes on).
func (r *Runtime) Promote() (uint32, error) {
	ptr, err := r.handle()
	if err != nil {
		return 0, err
	}
	var version C.uint32_t
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_promote(ptr, &version, &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	if err := takeError(status, cerr); err != nil {
		return 0, err
	}
	return uint32(version), nil
}

// AbortRollout rolls back the rollout in progress now: the canary stops serving, the
// stable version stays active, and the canary is marked rolled back (BeginRollout refuses
// it from then on). It returns the canary's version, or 0 when no rollout was in progress
// (which is not an error). Errors: ErrIO when rollout.json cannot be written.
func (r *Runtime) AbortRollout() (uint32, error) {
	ptr, err := r.handle()
	if err != nil {
		return 0, err
	}
	var version C.uint32_t
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_abort_rollout(ptr, &version, &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	if err := takeError(status, cerr); err != nil {
		return 0, err
	}
	return uint32(version), nil
}

// Rollout returns the rollout in progress, or the last one with its outcome, with live
// per-arm statistics and the current decision; nil (and no error) when the task never had
// a rollout.
func (r *Runtime) Rollout() (*RolloutStatus, error) {
	ptr, err := r.handle()
	if err != nil {
		return nil, err
	}
	var out *C.char
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_rollout_json(ptr, &out, &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	text := []byte(C.GoString(out))
	C.loopai_string_free(out)
	if string(text) == "null" {
		return nil, nil
	}
	s := &RolloutStatus{JSON: text}
	if err := json.Unmarshal(text, s); err != nil {
		return nil, &Error{Code: CodeInternal, Message: "cannot parse the rollout status: " + err.Error()}
	}
	return s, nil
}
