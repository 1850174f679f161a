package loopai

import (
	"bufio"
	"encoding/json"
	"errors"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The data dirs are prepared by scripts/test-bindings.sh.
func env(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run scripts/test-bindings.sh", name)
	}
	return v
}

func open(t *testing.T) *Runtime {
	t.Helper()
	rt, err := NewRuntime(env(t, "LOOPAI_TEST_DATA_DIR"), "spam", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close() })
	return rt
}

func TestExecuteMapAndBytes(t *testing.T) {
	rt := open(t)
	if Version() == "" {
		t.Fatal("empty version")
	}
	res, err := rt.Execute(map[string]any{"text": "WIN a FREE prize, call now"})
	if err != nil {
		t.Fatal(err)
	}
	if label, ok := res.Label(); !ok || label != "spam" {
		t.Fatalf("output %s", res.Output)
	}
	if res.Confidence != 0.95 || res.Version != 1 || res.Status != "success" || res.ExecutionID == "" {
		t.Fatalf("unexpected result %s", res.JSON)
	}
	if res.Scores["spam"] != 0.95 {
		t.Fatalf("scores %v", res.Scores)
	}
	res, err = rt.Execute([]byte(`{"text": "Are you coming home for dinner?"}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Output) != `"ham"` {
		t.Fatalf("output %s", res.Output)
	}
	if rt.ActiveVersion() != 1 {
		t.Fatal("active version")
	}
}

func TestErrorsCarryTheirCode(t *testing.T) {
	dir := env(t, "LOOPAI_TEST_DATA_DIR")
	_, err := NewRuntime(dir, "no-such-task", nil)
	if !errors.Is(err, ErrArtifact) {
		t.Fatalf("want ErrArtifact, got %v", err)
	}
	var le *Error
	if !errors.As(err, &le) || le.Code != CodeArtifact || le.Code.String() != "artifact" || le.Message == "" {
		t.Fatalf("bad error %#v", err)
	}
	if _, err := NewRuntime(dir, "sp\x00am", nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("NUL in task id: %v", err)
	}
	if _, err := NewRuntime(dir, "spam", map[string]any{"sampling": map[string]any{"rate": 1.5}}); !errors.Is(err, ErrConfig) {
		t.Fatalf("bad config: %v", err)
	}
	rt := open(t)
	for _, bad := range []any{[]byte(`{"text": `), []byte(""), []byte("[1]"), map[string]any{"text": 3}, []byte("{\"text\": \"\xff\"}")} {
		if _, err := rt.Execute(bad); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("%v: want ErrInvalidInput, got %v", bad, err)
		}
	}
	if errors.Is(ErrInvalidInput, ErrClosed) {
		t.Fatal("sentinels must differ")
	}
}

func TestCloseIsIdempotentAndLaterCallsAreClosed(t *testing.T) {
	rt, err := NewRuntime(env(t, "LOOPAI_TEST_DATA_DIR"), "spam", map[string]any{"storage": map[string]any{"durability": "durable"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Execute(map[string]any{"text": "x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
	if err := rt.Flush(time.Second); !errors.Is(err, ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
}

func TestShutdownFlushHealthBatch(t *testing.T) {
	rt := open(t)
	items, err := rt.ExecuteBatch([]any{map[string]any{"text": "free prize, claim now"}, map[string]any{"nope": 1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || items[0].Err != nil || string(items[0].Result.Output) != `"spam"` || !errors.Is(items[1].Err, ErrInvalidInput) {
		t.Fatalf("batch: %+v", items)
	}
	if err := rt.Flush(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	health, err := rt.Health()
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Status  string `json:"status"`
		Dataset struct {
			Written uint64 `json:"written"`
		} `json:"dataset"`
	}
	if err := json.Unmarshal(health, &h); err != nil || h.Status != "ok" || h.Dataset.Written != 2 {
		t.Fatalf("health %s (%v)", health, err)
	}
	if err := rt.Shutdown(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Execute(map[string]any{"text": "x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after shutdown: %v", err)
	}
}

func TestConcurrentExecuteAndClose(t *testing.T) {
	rt, err := NewRuntime(env(t, "LOOPAI_TEST_DATA_DIR"), "spam", nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				res, err := rt.Execute(map[string]any{"text": "Call me when you get this"})
				if err != nil {
					errs <- err
					return
				}
				if string(res.Output) != `"ham"` {
					errs <- errors.New(string(res.JSON))
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Close racing with executions: every call either succeeds or reports ErrClosed.
	var wg2 sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			for i := 0; i < 100; i++ {
				if _, err := rt.Execute(map[string]any{"text": "hi"}); err != nil && !errors.Is(err, ErrClosed) {
					t.Error(err)
					return
				}
			}
		}()
	}
	_ = rt.Close()
	wg2.Wait()
}

func TestFinalizerClosesForgottenRuntimes(t *testing.T) {
	dir := env(t, "LOOPAI_TEST_DATA_DIR")
	for i := 0; i < 5; i++ {
		rt, err := NewRuntime(dir, "spam", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Execute(map[string]any{"text": "forgotten"}); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
	time.Sleep(100 * time.Millisecond)
}

func TestParityVectors(t *testing.T) {
	rt, err := NewRuntime(env(t, "LOOPAI_VECTORS_DATA_DIR"), "spam", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	f, err := os.Open(env(t, "LOOPAI_VECTORS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	n := 0
	for scanner.Scan() {
		var v struct {
			Input          json.RawMessage    `json:"input"`
			Output         json.RawMessage    `json:"output"`
			Confidence     float64            `json:"confidence"`
			ConfidenceBits string             `json:"confidence_bits"`
			Scores         map[string]float64 `json:"scores"`
			Status         string             `json:"status"`
		}
		if err := json.Unmarshal(scanner.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		res, err := rt.Execute([]byte(v.Input))
		if err != nil {
			t.Fatalf("vector %d: %v", n, err)
		}
		bits, err := strconv.ParseUint(v.ConfidenceBits, 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		if math.Float64bits(res.Confidence) != bits || math.Float64bits(v.Confidence) != bits {
			t.Errorf("vector %d: confidence %v (%x), want %s", n, res.Confidence, math.Float64bits(res.Confidence), v.ConfidenceBits)
		}
		if string(res.Output) != string(v.Output) || res.Status != v.Status {
			t.Errorf("vector %d: output %s %s, want %s %s", n, res.Output, res.Status, v.Output, v.Status)
		}
		if len(res.Scores) != len(v.Scores) {
			t.Errorf("vector %d: scores %v, want %v", n, res.Scores, v.Scores)
		}
		for label, want := range v.Scores {
			if math.Float64bits(res.Scores[label]) != math.Float64bits(want) {
				t.Errorf("vector %d: score %s = %v, want %v", n, label, res.Scores[label], want)
			}
		}
		n++
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("only %d vectors", n)
	}
}

func TestExplainVectors(t *testing.T) {
	rt, err := NewRuntime(env(t, "LOOPAI_EXPLAIN_DATA_DIR"), "spam", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	f, err := os.Open(env(t, "LOOPAI_EXPLAIN_VECTORS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	n := 0
	for scanner.Scan() {
		var v struct {
			Input       json.RawMessage `json:"input"`
			TopK        int             `json:"top_k"`
			Explanation json.RawMessage `json:"explanation"`
		}
		if err := json.Unmarshal(scanner.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		got, err := rt.Explain([]byte(v.Input), v.TopK)
		if err != nil {
			t.Fatalf("vector %d: %v", n, err)
		}
		// The same text, byte for byte, as the Rust core wrote it.
		if string(got) != string(v.Explanation) {
			t.Errorf("vector %d: explanation\n%s\nwant\n%s", n, got, v.Explanation)
		}
		n++
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("only %d vectors", n)
	}
	if _, err := rt.Explain([]byte(`{"text": 1}`), 3); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("bad input: %v, want ErrInvalidInput", err)
	}
	if _, err := rt.Explain(map[string]any{"text": "hi"}, -1); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("negative topK: %v, want ErrInvalidInput", err)
	}
	why, err := rt.Explain(map[string]any{"text": "free prize"}, DefaultExplainTopK)
	if err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		Task    string `json:"task"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(why, &parsed); err != nil || parsed.Task != "spam" || parsed.Version != 1 {
		t.Errorf("explanation %s (%v)", why, err)
	}
}

// keywordOracle answers "spam" when the input mentions a prize, else "ham", and checks
// the request; calls counts its calls.
func keywordOracle(t *testing.T, calls *atomic.Int64) OracleFunc {
	return func(req OracleRequest) (OracleAnswer, error) {
		calls.Add(1)
		if req.Task != "spam" || len(req.Labels) != 2 || req.Labels[0] != "spam" || req.Labels[1] != "ham" ||
			req.Timeout() <= 0 || len(req.Input) == 0 {
			t.Errorf("unexpected request %+v", req)
		}
		var in struct {
			Text string `json:"text"`
		}
		if err := json.Unmarshal(req.Input, &in); err != nil {
			return OracleAnswer{}, err
		}
		if strings.Contains(in.Text, "prize") {
			return OracleAnswer{Output: "spam", Cost: 1.5}, nil
		}
		return OracleAnswer{Output: "ham"}, nil
	}
}

const abstaining = "ALL CAPS MESSAGE WITH NO SPAM WORDS" // the example program abstains (spam, 0.57)

func TestOracleValidatesSampledExecutions(t *testing.T) {
	var calls atomic.Int64
	rt, err := NewRuntimeWithOracle(env(t, "LOOPAI_TEST_DATA_DIR"), "spam",
		[]byte(`{"sampling": {"rate": 1, "seed": 7}}`), keywordOracle(t, &calls))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	// Program and oracle agree on the first two inputs and disagree on the third.
	for round := 0; round < 2; round++ {
		for _, text := range []string{"WIN a FREE prize, call now", "Are you coming home for dinner?", abstaining} {
			res, err := rt.Execute(map[string]any{"text": text})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Sampled || res.Source != "program" {
				t.Fatalf("result %s", res.JSON)
			}
		}
	}
	if err := rt.Flush(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	m, err := rt.ValidationMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if m.Oracle == nil || *m.Oracle != "in-process" || m.Validated != 6 || m.Matched != 4 || m.OracleErrors != 0 ||
		m.MatchRate == nil || len(m.Versions) != 1 || m.Versions[0].Version != 1 || m.Versions[0].Validated != 6 {
		t.Fatalf("metrics %s", m.JSON)
	}
	if calls.Load() != 6 {
		t.Fatalf("%d oracle calls", calls.Load())
	}
	health, err := rt.Health()
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Validation *ValidationMetrics `json:"validation"`
		Telemetry  json.RawMessage    `json:"telemetry"`
	}
	if err := json.Unmarshal(health, &h); err != nil || h.Validation == nil || h.Validation.Validated != 6 ||
		string(h.Telemetry) != "null" {
		t.Fatalf("health %s (%v)", health, err)
	}
}

func TestOracleErrorsAndPanicsAreCounted(t *testing.T) {
	oracles := map[string]OracleFunc{
		"error":     func(OracleRequest) (OracleAnswer, error) { return OracleAnswer{}, errors.New("model offline") },
		"panic":     func(OracleRequest) (OracleAnswer, error) { panic("oracle bug") },
		"bad label": func(OracleRequest) (OracleAnswer, error) { return OracleAnswer{Output: "maybe spam"}, nil },
		"no output": func(OracleRequest) (OracleAnswer, error) { return OracleAnswer{}, nil },
	}
	for name, oracle := range oracles {
		rt, err := NewRuntimeWithOracle(env(t, "LOOPAI_TEST_DATA_DIR"), "spam",
			map[string]any{"sampling": map[string]any{"rate": 1, "seed": 1}}, oracle)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			if _, err := rt.Execute(map[string]any{"text": "WIN a FREE prize, call now"}); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		if err := rt.Flush(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		m, err := rt.ValidationMetrics()
		if err != nil {
			t.Fatal(err)
		}
		if m.OracleErrors != 3 || m.Validated != 0 {
			t.Errorf("%s: metrics %s", name, m.JSON)
		}
		_ = rt.Close()
	}
}

func TestOracleAnswersAbstentionsInTheCascade(t *testing.T) {
	config := map[string]any{
		"execution": map[string]any{"fallback": "oracle", "timeout_ms": 30000},
		"sampling":  map[string]any{"rate": 0},
	}
	var calls atomic.Int64
	rt, err := NewRuntimeWithOracle(env(t, "LOOPAI_TEST_DATA_DIR"), "spam", config, keywordOracle(t, &calls))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				res, err := rt.Execute(map[string]any{"text": abstaining})
				if err != nil {
					errs <- err
					return
				}
				if label, _ := res.Label(); label != "ham" || res.Source != "oracle" || res.Status != "success" {
					errs <- errors.New(string(res.JSON))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	m, err := rt.ValidationMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if !m.Fallback || m.OracleFallbacks != 100 || m.OracleFallbackFailures != 0 || calls.Load() != 100 {
		t.Fatalf("metrics %s, %d calls", m.JSON, calls.Load())
	}

	failing, err := NewRuntimeWithOracle(env(t, "LOOPAI_TEST_DATA_DIR"), "spam", config,
		func(OracleRequest) (OracleAnswer, error) { return OracleAnswer{}, errors.New("down") })
	if err != nil {
		t.Fatal(err)
	}
	defer failing.Close()
	res, err := failing.Execute(map[string]any{"text": abstaining})
	if err != nil {
		t.Fatal(err)
	}
	if label, _ := res.Label(); label != "spam" || res.Status != "abstain" || res.Source != "program" {
		t.Fatalf("result %s", res.JSON)
	}
	if m, err := failing.ValidationMetrics(); err != nil || m.OracleFallbackFailures != 1 {
		t.Fatalf("metrics %+v (%v)", m, err)
	}
}

func TestNewRuntimeWithOracleErrorsAndRelease(t *testing.T) {
	dir := env(t, "LOOPAI_TEST_DATA_DIR")
	if _, err := NewRuntimeWithOracle(dir, "spam", nil, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("nil oracle: %v", err)
	}
	var calls atomic.Int64
	before := liveOracles.Load()
	if _, err := NewRuntimeWithOracle(dir, "no-such-task", nil, keywordOracle(t, &calls)); !errors.Is(err, ErrArtifact) {
		t.Fatalf("want ErrArtifact, got %v", err)
	}
	if _, err := NewRuntimeWithOracle(dir, "spam", []byte(`{"sampling": 3}`), keywordOracle(t, &calls)); !errors.Is(err, ErrConfig) {
		t.Fatalf("want ErrConfig, got %v", err)
	}
	if liveOracles.Load() != before {
		t.Fatalf("a failed constructor kept its oracle (%d live, %d before)", liveOracles.Load(), before)
	}
	rt, err := NewRuntimeWithOracle(dir, "spam", nil, keywordOracle(t, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if liveOracles.Load() != before+1 {
		t.Fatalf("%d live oracles, want %d", liveOracles.Load(), before+1)
	}
	_ = rt.Close()
	if liveOracles.Load() != before {
		t.Fatalf("Close did not release the oracle (%d live, %d before)", liveOracles.Load(), before)
	}
	if _, err := rt.ValidationMetrics(); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// The rollout data dir has v1 active and v2, v3 installed (scripts/test-bindings.sh); this
// test is the only user of it and leaves v2 active, v3 rolled back.
func TestRolloutRoutesByKeyPromotesAndRollsBack(t *testing.T) {
	rt, err := NewRuntime(env(t, "LOOPAI_ROLLOUT_DATA_DIR"), "spam",
		map[string]any{"rollout": map[string]any{"stages": []float64{0.5, 1}}})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if s, err := rt.Rollout(); err != nil || s != nil {
		t.Fatalf("before any rollout: %+v, %v", s, err)
	}
	if v, err := rt.AbortRollout(); err != nil || v != 0 {
		t.Fatalf("abort without a rollout: %d, %v", v, err)
	}
	if _, err := rt.Promote(); !errors.Is(err, ErrArtifact) {
		t.Fatalf("promote without a rollout: %v", err)
	}
	for _, v := range []uint32{1, 9} { // the active version; not installed
		if err := rt.BeginRollout(v); !errors.Is(err, ErrArtifact) {
			t.Fatalf("BeginRollout(%d): want ErrArtifact, got %v", v, err)
		}
	}

	if err := rt.BeginRollout(2); err != nil {
		t.Fatal(err)
	}
	s, err := rt.Rollout()
	if err != nil || s == nil {
		t.Fatalf("rollout: %+v, %v", s, err)
	}
	if s.State != RolloutInProgress || s.StableVersion != 1 || s.CanaryVersion != 2 || s.Stage != 0 ||
		s.Fraction != 0.5 || len(s.Stages) != 2 || s.Canary.Version != 2 || s.StartedAt.IsZero() ||
		len(s.RecentEvents) == 0 || s.RecentEvents[0].Kind != "started" {
		t.Fatalf("rollout %s", s.JSON)
	}
	served := map[uint32]int{}
	for i := 0; i < 64; i++ {
		key := "user-" + strconv.Itoa(i)
		first, err := rt.ExecuteWithKey(map[string]any{"text": "hello"}, key)
		if err != nil {
			t.Fatal(err)
		}
		again, err := rt.ExecuteWithKey([]byte(`{"text": "WIN a FREE prize, call now"}`), key)
		if err != nil {
			t.Fatal(err)
		}
		if first.Version != again.Version {
			t.Fatalf("key %s served by v%d, then v%d", key, first.Version, again.Version)
		}
		served[first.Version]++
	}
	if len(served) != 2 || served[1] == 0 || served[2] == 0 {
		t.Fatalf("versions served: %v", served)
	}
	// The arms count an execution once it is in the log: flush first.
	if err := rt.Flush(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if s, err := rt.Rollout(); err != nil || s.Stable.Executions+s.Canary.Executions != 128 {
		t.Fatalf("arm statistics: %+v, %v", s, err)
	}
	if _, err := rt.ExecuteWithKey(map[string]any{"text": "x"}, "us\x00er"); !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("NUL in key: %v", err)
	}
	if _, err := rt.ExecuteWithKey([]byte(`{"text": `), "user-1"); !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("bad JSON: %v", err)
	}

	if v, err := rt.Promote(); err != nil || v != 2 {
		t.Fatalf("promote: %d, %v", v, err)
	}
	if rt.ActiveVersion() != 2 {
		t.Fatalf("active version %d after promote", rt.ActiveVersion())
	}
	if s, err := rt.Rollout(); err != nil || s.State != RolloutPromoted || s.Fraction != 1 {
		t.Fatalf("after promote: %+v, %v", s, err)
	}
	if res, err := rt.ExecuteWithKey(map[string]any{"text": "hello"}, "user-0"); err != nil || res.Version != 2 {
		t.Fatalf("after promote: %+v, %v", res, err)
	}

	if err := rt.BeginRollout(3); err != nil {
		t.Fatal(err)
	}
	if v, err := rt.AbortRollout(); err != nil || v != 3 {
		t.Fatalf("abort: %d, %v", v, err)
	}
	if rt.ActiveVersion() != 2 {
		t.Fatalf("active version %d after abort", rt.ActiveVersion())
	}
	s, err = rt.Rollout()
	if err != nil || s.State != RolloutRolledBack || s.StableVersion != 2 || s.CanaryVersion != 3 || s.Fraction != 0 {
		t.Fatalf("after abort: %+v, %v", s, err)
	}
	if err := rt.BeginRollout(3); !errors.Is(err, ErrArtifact) {
		t.Fatalf("a rolled-back canary again: %v", err)
	}
	health, err := rt.Health()
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Rollout *RolloutStatus `json:"rollout"`
	}
	if err := json.Unmarshal(health, &h); err != nil || h.Rollout == nil || h.Rollout.State != RolloutRolledBack {
		t.Fatalf("health %s (%v)", health, err)
	}

	_ = rt.Close()
	if err := rt.BeginRollout(3); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if _, err := rt.ExecuteWithKey(map[string]any{"text": "x"}, "k"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if _, err := rt.Rollout(); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
