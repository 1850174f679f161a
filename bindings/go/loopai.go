// Package loopai runs Loopai programs in-process through libloopai, the Loopai C API.
//
// Build: the package finds libloopai and loopai.h with pkg-config (`#cgo pkg-config:
// loopai`), after `scripts/install-c-lib.sh PREFIX` (docs/c-api.md). With PREFIX /usr/local
// and `ldconfig` nothing more is needed; for another prefix, set
//
//	PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig CGO_LDFLAGS="-Wl,-rpath,$PREFIX/lib"
//
// (README.md in this directory: the one step that adds the module to yours).
//
// NewRuntimeWithOracle gives the runtime an in-process oracle, a Go function that
// validates sampled executions and answers abstentions (docs/oracle.md).
//
// A version installed without activation is handed over by a canary rollout
// (docs/rollout.md): BeginRollout, then Promote or AbortRollout, with Rollout showing where
// it stands; ExecuteWithKey keeps each caller-chosen key (a user id) on one version.
//
// A Runtime is safe for concurrent use by many goroutines. Close it when done; a finalizer
// closes a Runtime that is garbage-collected without Close, but the execution log is then
// flushed at an unpredictable time.
//
// Errors returned by this package are *Error values carrying the stable status code;
// test them with errors.Is against the sentinel errors (ErrInvalidInput, ErrClosed, ...).
package loopai

/*
#cgo pkg-config: loopai
#include <stdlib.h>
#include "loopai.h"
*/
import "C"

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Code is a libloopai status code: 0 for success, a negative value for each error kind.
type Code int32

// The status codes (stable; the same as the C API's LOOPAI_* macros).
const (
	CodeOK            Code = C.LOOPAI_OK
	CodeInvalidInput  Code = C.LOOPAI_E_INVALID_INPUT
	CodeProgram       Code = C.LOOPAI_E_PROGRAM
	CodeSchema        Code = C.LOOPAI_E_SCHEMA
	CodeInvalidOutput Code = C.LOOPAI_E_INVALID_OUTPUT
	CodeArtifact      Code = C.LOOPAI_E_ARTIFACT
	CodeConfig        Code = C.LOOPAI_E_CONFIG
	CodeIO            Code = C.LOOPAI_E_IO
	CodeTimeout       Code = C.LOOPAI_E_TIMEOUT
	CodeClosed        Code = C.LOOPAI_E_CLOSED
	CodeInternal      Code = C.LOOPAI_E_INTERNAL
	CodeOracle        Code = C.LOOPAI_E_ORACLE
)

// String returns the code's stable name ("invalid_input", "closed", ...; "unknown").
func (c Code) String() string {
	return C.GoString(C.loopai_status_str(C.loopai_status_t(c)))
}

// Error is an error reported by libloopai: a status code and a message that names what is
// wrong.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "loopai: " + e.Code.String()
	}
	return "loopai: " + e.Code.String() + ": " + e.Message
}

// Is reports whether target is the sentinel error of e's code, so that
// errors.Is(err, loopai.ErrClosed) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Code == e.Code
}

// Sentinel errors, one per code, for errors.Is.
var (
	ErrInvalidInput  = &Error{Code: CodeInvalidInput}
	ErrProgram       = &Error{Code: CodeProgram}
	ErrSchema        = &Error{Code: CodeSchema}
	ErrInvalidOutput = &Error{Code: CodeInvalidOutput}
	ErrArtifact      = &Error{Code: CodeArtifact}
	ErrConfig        = &Error{Code: CodeConfig}
	ErrIO            = &Error{Code: CodeIO}
	ErrTimeout       = &Error{Code: CodeTimeout}
	ErrClosed        = &Error{Code: CodeClosed}
	ErrInternal      = &Error{Code: CodeInternal}
	ErrOracle        = &Error{Code: CodeOracle}
)

// Version is the version of the loaded libloopai.
func Version() string {
	return C.GoString(C.loopai_version())
}

// takeError turns a status and an optional error object into an *Error, freeing the object.
func takeError(status C.loopai_status_t, cerr *C.loopai_error_t) error {
	if status == C.LOOPAI_OK {
		return nil
	}
	e := &Error{Code: Code(status)}
	if cerr != nil {
		e.Message = C.GoString(C.loopai_error_message(cerr))
		C.loopai_error_free(cerr)
	}
	return e
}

// cString copies s into C memory (free it with C.free); a NUL byte inside is an error.
func cString(what, s string, code Code) (*C.char, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, &Error{Code: code, Message: what + " contains a NUL byte"}
	}
	return C.CString(s), nil
}

func millis(d time.Duration) C.uint32_t {
	ms := d.Milliseconds()
	if ms < 0 {
		ms = 0
	}
	if ms > math.MaxUint32 {
		ms = math.MaxUint32
	}
	return C.uint32_t(ms)
}

// Runtime runs one task's active program. It is safe for concurrent use.
type Runtime struct {
	mu  sync.RWMutex // Close takes it exclusively, so the handle is never freed in use.
	ptr *C.loopai_runtime_t
}

// NewRuntime opens task taskID in dataDir. config is nil (use
// <dataDir>/config/deployment.yaml if it exists, else the defaults), raw JSON ([]byte or
// json.RawMessage), or a value with the layout of deployment.yaml that is marshalled to
// JSON (a map or a struct).
func NewRuntime(dataDir, taskID string, config any) (*Runtime, error) {
	args, err := newRuntimeArgs(dataDir, taskID, config)
	if err != nil {
		return nil, err
	}
	defer args.free()
	var ptr *C.loopai_runtime_t
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_new(args.dir, args.task, args.config, &ptr, &cerr)
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	r := &Runtime{ptr: ptr}
	runtime.SetFinalizer(r, func(r *Runtime) { _ = r.Close() })
	return r, nil
}

// runtimeArgs are the C strings of the runtime constructors.
type runtimeArgs struct {
	dir, task, config *C.char
}

func newRuntimeArgs(dataDir, taskID string, config any) (*runtimeArgs, error) {
	a := &runtimeArgs{}
	var err error
	if a.dir, err = cString("data_dir", dataDir, CodeConfig); err != nil {
		return nil, err
	}
	if a.task, err = cString("task_id", taskID, CodeConfig); err != nil {
		a.free()
		return nil, err
	}
	if config != nil {
		var data []byte
		switch v := config.(type) {
		case []byte:
			data = v
		case json.RawMessage:
			data = v
		default:
			if data, err = json.Marshal(config); err != nil {
				a.free()
				return nil, &Error{Code: CodeConfig, Message: "config: " + err.Error()}
			}
		}
		if a.config, err = cString("config", string(data), CodeConfig); err != nil {
			a.free()
			return nil, err
		}
	}
	return a, nil
}

func (a *runtimeArgs) free() {
	for _, p := range []*C.char{a.dir, a.task, a.config} {
		if p != nil {
			C.free(unsafe.Pointer(p))
		}
	}
}

// Close flushes the execution log (waiting at most 5 seconds) and frees the runtime. It
// waits for calls in progress on other goroutines. Calling it again does nothing; later
// calls of other methods return ErrClosed.
func (r *Runtime) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ptr != nil {
		C.loopai_runtime_free(r.ptr)
		r.ptr = nil
		runtime.SetFinalizer(r, nil)
	}
	return nil
}

// handle returns the C runtime with the read lock held; call r.mu.RUnlock when done.
func (r *Runtime) handle() (*C.loopai_runtime_t, error) {
	r.mu.RLock()
	if r.ptr == nil {
		r.mu.RUnlock()
		return nil, &Error{Code: CodeClosed, Message: "the Runtime is closed"}
	}
	return r.ptr, nil
}

// Result is the result of one execution.
type Result struct {
	ExecutionID string             `json:"execution_id"`
	Output      json.RawMessage    `json:"output"` // a label such as "spam" (JSON), an object, or null
	Confidence  float64            `json:"confidence"`
	Scores      map[string]float64 `json:"scores"`
	Version     uint32             `json:"version"`
	LatencyMs   float64            `json:"latency_ms"`
	Status      string             `json:"status"` // "success" or "abstain"
	Sampled     bool               `json:"sampled"`
	DecidedBy   *string            `json:"decided_by"`
	// Source is "program", or "oracle" when the program abstained and
	// execution.fallback: oracle answered.
	Source string `json:"source"`
	// JSON is the whole result as libloopai serialized it.
	JSON []byte `json:"-"`
}

// Label returns the output as a string when it is a JSON string (a classification label).
func (r *Result) Label() (string, bool) {
	var s string
	if err := json.Unmarshal(r.Output, &s); err != nil {
		return "", false
	}
	return s, true
}

func parseResult(data []byte) (*Result, error) {
	res := &Result{JSON: data}
	if err := json.Unmarshal(data, res); err != nil {
		return nil, &Error{Code: CodeInternal, Message: "cannot parse a result: " + err.Error()}
	}
	return res, nil
}

// inputBytes returns raw JSON for []byte and json.RawMessage, else marshals input.
func inputBytes(input any) ([]byte, error) {
	switch v := input.(type) {
	case []byte:
		return v, nil
	case json.RawMessage:
		return v, nil
	default:
		data, err := json.Marshal(v)
		if err != nil {
			return nil, &Error{Code: CodeInvalidInput, Message: "input: " + err.Error()}
		}
		return data, nil
	}
}

// bytesArg returns a C pointer and length for data (never a nil pointer).
func bytesArg(data []byte) (*C.uint8_t, C.size_t) {
	if len(data) == 0 {
		var zero C.uint8_t
		return &zero, 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&data[0])), C.size_t(len(data))
}

// Execute runs the active program on input: raw JSON ([]byte or json.RawMessage) or any
// value that marshals to a JSON object, such as map[string]any.
//
// During a canary rollout the input (or its rollout.sticky_key) routes the execution to the
// stable or the canary version; see ExecuteWithKey.
func (r *Runtime) Execute(input any) (*Result, error) {
	return r.execute(input, nil)
}

// ExecuteWithKey runs the program on input as Execute does, with the routing key of a
// canary rollout chosen by the caller (a user id, a session id): during a rollout the same
// key is served by the same version for the whole stage, and stays on the canary as its
// share grows (docs/rollout.md). Result.Version says which version served it. Without a
// rollout in progress the key is not used. A key containing a NUL byte is ErrInvalidInput.
func (r *Runtime) ExecuteWithKey(input any, key string) (*Result, error) {
	return r.execute(input, &key)
}

// execute runs loopai_runtime_execute, or loopai_runtime_execute_with_key when key is set.
func (r *Runtime) execute(input any, key *string) (*Result, error) {
	data, err := inputBytes(input)
	if err != nil {
		return nil, err
	}
	var ckey *C.char
	if key != nil {
		if ckey, err = cString("key", *key, CodeInvalidInput); err != nil {
			return nil, err
		}
		defer C.free(unsafe.Pointer(ckey))
	}
	ptr, err := r.handle()
	if err != nil {
		return nil, err
	}
	p, n := bytesArg(data)
	var cres *C.loopai_result_t
	var cerr *C.loopai_error_t
	var status C.loopai_status_t
	if key != nil {
		status = C.loopai_runtime_execute_with_key(ptr, p, n, ckey, &cres, &cerr)
	} else {
		status = C.loopai_runtime_execute(ptr, p, n, &cres, &cerr)
	}
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	runtime.KeepAlive(data)
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	defer C.loopai_result_free(cres)
	res, err := parseResult([]byte(C.GoString(C.loopai_result_json(cres))))
	if err != nil {
		return nil, err
	}
	// Straight from the C accessors, bit for bit.
	res.Confidence = float64(C.loopai_result_confidence(cres))
	res.Version = uint32(C.loopai_result_version(cres))
	return res, nil
}

// BatchItem is the outcome of one input of ExecuteBatch: a Result or an error.
type BatchItem struct {
	Result *Result
	Err    error
}

// ExecuteBatch runs the program on each input (as accepted by Execute), in order. A
// failing input gives an item with Err set; it does not fail the call.
func (r *Runtime) ExecuteBatch(inputs []any) ([]BatchItem, error) {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, in := range inputs {
		data, err := inputBytes(in)
		if err != nil {
			return nil, fmt.Errorf("inputs[%d]: %w", i, err)
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(data)
	}
	buf.WriteByte(']')
	data := buf.Bytes()
	ptr, err := r.handle()
	if err != nil {
		return nil, err
	}
	p, n := bytesArg(data)
	var out *C.char
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_execute_batch(ptr, p, n, &out, &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	runtime.KeepAlive(data)
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	text := C.GoString(out)
	C.loopai_string_free(out)
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(text), &raw); err != nil {
		return nil, &Error{Code: CodeInternal, Message: "cannot parse batch results: " + err.Error()}
	}
	items := make([]BatchItem, len(raw))
	for i, item := range raw {
		var failed struct {
			Error *struct {
				Code    int32  `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(item, &failed); err == nil && failed.Error != nil {
			items[i].Err = &Error{Code: Code(failed.Error.Code), Message: failed.Error.Message}
			continue
		}
		items[i].Result, items[i].Err = parseResult(item)
	}
	return items, nil
}

// Flush makes every execution accepted so far durable, waiting at most timeout.
func (r *Runtime) Flush(timeout time.Duration) error {
	ptr, err := r.handle()
	if err != nil {
		return err
	}
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_flush(ptr, millis(timeout), &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	return takeError(status, cerr)
}

// Shutdown flushes and stops the background thread, waiting at most timeout; later
// executions fail with ErrClosed. Close must still be called.
func (r *Runtime) Shutdown(timeout time.Duration) error {
	ptr, err := r.handle()
	if err != nil {
		return err
	}
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_shutdown(ptr, millis(timeout), &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	return takeError(status, cerr)
}

// ActiveVersion is the artifact version executing now (0 once closed).
func (r *Runtime) ActiveVersion() uint32 {
	ptr, err := r.handle()
	if err != nil {
		return 0
	}
	v := uint32(C.loopai_runtime_active_version(ptr))
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	return v
}

// Explain returns why the active program decides what it does on input (as for Execute:
// a map, a struct, []byte or json.RawMessage of JSON text): the decision path as JSON,
// {"task", "version", "output", "confidence", "abstained", "decided_by", "abstention",
// "decision"} — the rule that fired with the feature values its conditions saw, or a
// model's per-class scores with its topK largest contributions traced back to the n-grams
// and keywords of this input (docs/program-format.md, "Explanations"). Output and
// confidence are exactly what Execute returns; the active version is explained, never a
// canary; nothing is logged, sampled or counted. topK is the most contributions listed per
// class (DefaultExplainTopK is what the other languages use by default).
func (r *Runtime) Explain(input any, topK int) (json.RawMessage, error) {
	data, err := inputBytes(input)
	if err != nil {
		return nil, err
	}
	if topK < 0 || int64(topK) > math.MaxUint32 {
		return nil, &Error{Code: CodeInvalidInput, Message: fmt.Sprintf("Explain: topK %d is out of range", topK)}
	}
	ptr, err := r.handle()
	if err != nil {
		return nil, err
	}
	p, n := bytesArg(data)
	var out *C.char
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_explain(ptr, p, n, C.uint32_t(topK), &out, &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	runtime.KeepAlive(data)
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	text := C.GoString(out)
	C.loopai_string_free(out)
	return json.RawMessage(text), nil
}

// DefaultExplainTopK is the number of contributions per class Explain lists by default in
// the other languages.
const DefaultExplainTopK = 10

// Health returns the runtime's health as JSON: status ("ok" or "degraded"), task,
// active_version, the execution-log counters under dataset, the telemetry counters under
// telemetry (null when telemetry is off), the validation metrics under validation and the
// rollout under rollout (as Rollout; null when the task never had one).
func (r *Runtime) Health() (json.RawMessage, error) {
	ptr, err := r.handle()
	if err != nil {
		return nil, err
	}
	var out *C.char
	var cerr *C.loopai_error_t
	status := C.loopai_runtime_health_json(ptr, &out, &cerr)
	r.mu.RUnlock()
	runtime.KeepAlive(r)
	if err := takeError(status, cerr); err != nil {
		return nil, err
	}
	text := C.GoString(out)
	C.loopai_string_free(out)
	return json.RawMessage(text), nil
}
