package loopai

/*
#include <stdint.h>
#include <stdlib.h>
#include "loopai.h"

// Implemented in Go below (//export); declared with the types cgo gives them.
extern int32_t loopaiGoOracle(void *user_data, char *request_json, size_t request_len,
                              loopai_oracle_reply_t *reply);
extern void loopaiGoOracleFree(void *user_data);
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync/atomic"
	"time"
	"unsafe"
)

// liveOracles counts the oracles the library still holds (tests check it drops to 0).
var liveOracles atomic.Int64

// OracleRequest is what the oracle is asked: the task, the allowed answers and one input
// (docs/oracle.md, "The request and the reply").
type OracleRequest struct {
	Task        string `json:"task"`
	Description string `json:"description"` // the artifact's description; may be empty
	// Labels are the allowed labels of a classification (empty for extraction).
	Labels []string `json:"labels"`
	// OutputSchema is the task's output schema as JSON, or "null".
	OutputSchema json.RawMessage `json:"output_schema"`
	// Input is the input object exactly as given to Execute.
	Input json.RawMessage `json:"input"`
	// TimeoutMs is how long the runtime waits for the answer, in milliseconds.
	TimeoutMs uint64 `json:"timeout_ms"`
}

// Timeout is TimeoutMs as a time.Duration.
func (r *OracleRequest) Timeout() time.Duration {
	return time.Duration(r.TimeoutMs) * time.Millisecond
}

// OracleAnswer is an oracle's answer.
type OracleAnswer struct {
	// Output is a label (a string naming one of the request's Labels) or, for extraction,
	// a value that marshals to a JSON object (a map, a struct, json.RawMessage).
	Output any `json:"output"`
	// Cost is what the call cost, in the provider's units (0 if unknown).
	Cost float64 `json:"cost"`
}

// OracleFunc is an in-process oracle. It is called from the runtime's validation threads
// and, with execution.fallback: oracle, from goroutines calling Execute, concurrently: it
// must be safe for concurrent use. It should answer within req.Timeout(). An error, a
// panic, or an output that is not an allowed label (or, for extraction, an object matching
// the output schema) is an oracle error: counted in ValidationMetrics (OracleErrors,
// OracleFallbackFailures), never returned by Execute. It must not call Flush, Shutdown or
// Close on its own Runtime.
type OracleFunc func(req OracleRequest) (OracleAnswer, error)

// NewRuntimeWithOracle opens task taskID in dataDir as NewRuntime does, with oracle as its
// oracle: it validates sampled executions in the background and, with
// execution.fallback: oracle, answers when the program abstains. It wins over the
// configuration's oracle section. The oracle is released once the runtime is closed and no
// call of it is running any more.
func NewRuntimeWithOracle(dataDir, taskID string, config any, oracle OracleFunc) (*Runtime, error) {
	if oracle == nil {
		return nil, &Error{Code: CodeConfig, Message: "oracle is nil"}
	}
	args, err := newRuntimeArgs(dataDir, taskID, config)
	if err != nil {
		return nil, err
	}
	defer args.free()
	// user_data is C memory holding a cgo.Handle: no Go pointer is kept by C. The library
	// calls loopaiGoOracleFree exactly once, also when creating the runtime fails.
	handle := cgo.NewHandle(oracle)
	liveOracles.Add(1)
	userData := C.malloc(C.size_t(unsafe.Sizeof(C.uintptr_t(0))))
	if userData == nil {
		handle.Delete()
		liveOracles.Add(-1)
		return nil, &Error{Code: CodeInternal, Message: "out of memory"}
	}
	*(*C.uintptr_t)(userData) = C.uintptr_t(handle)
	var ptr *C.loopai_runtime_t
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_new_with_oracle(args.dir, args.task, args.config,
		C.loopai_oracle_fn(C.loopaiGoOracle), userData, C.loopai_free_fn(C.loopaiGoOracleFree),
		&ptr, &cerr)
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	r := &Runtime{ptr: ptr}
	runtime.SetFinalizer(r, func(r *Runtime) { _ = r.Close() })
	return r, nil
}

// replyError sets the failure message of a reply.
func replyError(reply *C.loopai_oracle_reply_t, message string) {
	if message == "" {
		return
	}
	msg := []byte(message)
	C.loopai_oracle_reply_set_error(reply, (*C.char)(unsafe.Pointer(&msg[0])), C.size_t(len(msg)))
}

//export loopaiGoOracle
func loopaiGoOracle(userData unsafe.Pointer, requestJSON *C.char, requestLen C.size_t,
	reply *C.loopai_oracle_reply_t) (code C.int32_t) {
	// A panic must not cross into C (it would kill the process): it is an oracle error.
	defer func() {
		if p := recover(); p != nil {
			replyError(reply, fmt.Sprintf("the Go oracle panicked: %v", p))
			code = 1
		}
	}()
	oracle := cgo.Handle(*(*C.uintptr_t)(userData)).Value().(OracleFunc)
	data := C.GoBytes(unsafe.Pointer(requestJSON), C.int(requestLen))
	var req OracleRequest
	if err := json.Unmarshal(data, &req); err != nil {
		replyError(reply, "cannot parse the oracle request: "+err.Error())
		return 1
	}
	answer, err := oracle(req)
	if err != nil {
		replyError(reply, "the Go oracle returned an error: "+err.Error())
		return 1
	}
	out, err := json.Marshal(answer)
	if err != nil {
		replyError(reply, "cannot marshal the Go oracle's answer: "+err.Error())
		return 1
	}
	// Go memory passed for the duration of the call only; the library copies it.
	return C.int32_t(C.loopai_oracle_reply_set(reply, (*C.char)(unsafe.Pointer(&out[0])),
		C.size_t(len(out))))
}

//export loopaiGoOracleFree
func loopaiGoOracleFree(userData unsafe.Pointer) {
	cgo.Handle(*(*C.uintptr_t)(userData)).Delete()
	C.free(userData)
	liveOracles.Add(-1)
}

// VersionValidationMetrics are the validation counters of one program version.
type VersionValidationMetrics struct {
	Version                uint32   `json:"version"`
	Validated              uint64   `json:"validated"`
	Matched                uint64   `json:"matched"`
	MatchRate              *float64 `json:"match_rate"` // nil before the first validation
	RollingValidated       uint64   `json:"rolling_validated"`
	RollingMatchRate       *float64 `json:"rolling_match_rate"`
	SkippedQueueFull       uint64   `json:"skipped_queue_full"`
	OracleErrors           uint64   `json:"oracle_errors"`
	OracleFallbacks        uint64   `json:"oracle_fallbacks"`
	OracleFallbackFailures uint64   `json:"oracle_fallback_failures"`
}

// ValidationMetrics are the counters of validation against the oracle and of the oracle
// fallback since the runtime started (docs/oracle.md, "Metrics").
type ValidationMetrics struct {
	// Oracle is "in-process" (a Go, C or C# callback), "http <model> at <endpoint>", or
	// nil: then sampled executions are not validated (SkippedNoOracle).
	Oracle                 *string                    `json:"oracle"`
	Comparison             string                     `json:"comparison"`
	Fallback               bool                       `json:"fallback"`
	Queued                 uint64                     `json:"queued"`
	Validated              uint64                     `json:"validated"`
	Matched                uint64                     `json:"matched"`
	MatchRate              *float64                   `json:"match_rate"` // nil before the first validation
	SkippedQueueFull       uint64                     `json:"skipped_queue_full"`
	SkippedNoOracle        uint64                     `json:"skipped_no_oracle"`
	SkippedShutdown        uint64                     `json:"skipped_shutdown"`
	OracleErrors           uint64                     `json:"oracle_errors"`
	OracleFallbacks        uint64                     `json:"oracle_fallbacks"`
	OracleFallbackFailures uint64                     `json:"oracle_fallback_failures"`
	Versions               []VersionValidationMetrics `json:"versions"`
	// JSON is the whole document as libloopai serialized it.
	JSON json.RawMessage `json:"-"`
}

// ValidationMetrics returns the validation and oracle-fallback counters. They are updated
// as validations finish: Flush first to wait for the samples queued so far.
func (r *Runtime) ValidationMetrics() (*ValidationMetrics, error) {
	ptr, err := r.handle()
	if err != nil {
		return nil, err
	}
	var out *C.char
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_validation_metrics_json(ptr, &out, &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	text := []byte(C.GoString(out))
	C.loopai_string_free(out)
	m := &ValidationMetrics{JSON: text}
	if err := json.Unmarshal(text, m); err != nil {
		return nil, &Error{Code: CodeInternal, Message: "cannot parse validation metrics: " + err.Error()}
	}
	return m, nil
}
