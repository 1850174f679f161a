package loopai

import (
	"bufio"
	"encoding/json"
	"errors"
	"math"
	"os"
	"runtime"
	"strconv"
	"sync"
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
