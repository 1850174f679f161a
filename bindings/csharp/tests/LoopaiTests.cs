// Tests of the C# binding against a real libloopai, run by scripts/test-bindings.sh:
//   mcs -out:LoopaiTests.exe bindings/csharp/Loopai.cs bindings/csharp/tests/LoopaiTests.cs
//   mono LoopaiTests.exe
// Environment: LOOPAI_TEST_DATA_DIR, LOOPAI_VECTORS_DATA_DIR, LOOPAI_VECTORS,
// LOOPAI_EXPLAIN_DATA_DIR, LOOPAI_EXPLAIN_VECTORS, LOOPAI_ROLLOUT_DATA_DIR (see the script).
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Threading;
using Loopai;

internal static class LoopaiTests
{
    private static int passed, failed;

    private static string Env(string name)
    {
        var v = Environment.GetEnvironmentVariable(name);
        if (string.IsNullOrEmpty(v))
            throw new Exception(name + " is not set: run scripts/test-bindings.sh");
        return v;
    }

    private static void Assert(bool cond, string what)
    {
        if (!cond)
            throw new Exception("assertion failed: " + what);
    }

    private static LoopaiException Throws(Action a)
    {
        try
        {
            a();
        }
        catch (LoopaiException e)
        {
            return e;
        }
        throw new Exception("expected a LoopaiException");
    }

    private static void Run(string name, Action test)
    {
        try
        {
            test();
            Console.WriteLine("ok   " + name);
            passed++;
        }
        catch (Exception e)
        {
            Console.WriteLine("FAIL " + name + ": " + e);
            failed++;
        }
    }

    private static void ExecuteReturnsResults()
    {
        Assert(LoopaiRuntime.LibraryVersion.Length > 0, "version");
        using (var rt = new LoopaiRuntime(Env("LOOPAI_TEST_DATA_DIR"), "spam"))
        {
            var r = rt.Execute("{\"text\": \"WIN a FREE prize, call now\"}");
            Assert(r.Label == "spam", "label " + r.OutputJson);
            Assert(r.OutputJson == "\"spam\"", "output json");
            Assert(r.Confidence == 0.95, "confidence " + r.Confidence.ToString("R"));
            Assert(r.Version == 1 && rt.ActiveVersion == 1, "version");
            Assert(r.Json.Contains("\"status\":\"success\""), r.Json);
            var ham = rt.Execute(System.Text.Encoding.UTF8.GetBytes("{\"text\": \"see you at home\"}"));
            Assert(ham.Label == "ham", ham.Json);
        }
    }

    private static void ErrorsCarryTheirCode()
    {
        var dir = Env("LOOPAI_TEST_DATA_DIR");
        var e = Throws(() => new LoopaiRuntime(dir, "no-such-task"));
        Assert(e.Code == LoopaiStatus.Artifact && e.Kind == "artifact", e.ToString());
        Assert(e.Message.Contains("no active program"), e.Message);
        e = Throws(() => new LoopaiRuntime(dir, "spam", "{\"sampling\": {\"rate\": 1.5}}"));
        Assert(e.Code == LoopaiStatus.Config && e.Message.Contains("sampling.rate"), e.Message);
        e = Throws(() => new LoopaiRuntime(dir, "spam", "{nope"));
        Assert(e.Code == LoopaiStatus.Config, e.Message);
        e = Throws(() => new LoopaiRuntime(dir, "sp\0am"));
        Assert(e.Code == LoopaiStatus.Config, e.Message);
        e = Throws(() => new LoopaiRuntime(null, "spam"));
        Assert(e.Code == LoopaiStatus.Config, e.Message);
        Assert(LoopaiRuntime.StatusName((LoopaiStatus)(-1000)) == "unknown", "unknown code");
        using (var rt = new LoopaiRuntime(dir, "spam"))
        {
            foreach (var bad in new[] { "{\"text\": ", "", "[1]", "{\"text\": 3}", "{}" })
            {
                e = Throws(() => rt.Execute(bad));
                Assert(e.Code == LoopaiStatus.InvalidInput, bad + ": " + e.Message);
            }
            e = Throws(() => rt.Execute(new byte[] { (byte)'{', (byte)'"', 0xff, (byte)'"', (byte)'}' }));
            Assert(e.Code == LoopaiStatus.InvalidInput, e.Message);
            e = Throws(() => rt.Execute((string)null));
            Assert(e.Code == LoopaiStatus.InvalidInput, e.Message);
        }
    }

    private static void DisposeIsIdempotentAndLaterCallsAreClosed()
    {
        var rt = new LoopaiRuntime(Env("LOOPAI_TEST_DATA_DIR"), "spam", "{\"storage\": {\"durability\": \"durable\"}}");
        rt.Execute("{\"text\": \"hello\"}");
        rt.Dispose();
        rt.Dispose();
        var e = Throws(() => rt.Execute("{\"text\": \"hello\"}"));
        Assert(e.Code == LoopaiStatus.Closed, e.Message);
        e = Throws(() => rt.Flush(TimeSpan.FromSeconds(1)));
        Assert(e.Code == LoopaiStatus.Closed, e.Message);
    }

    private static void BatchFlushHealthShutdown()
    {
        using (var rt = new LoopaiRuntime(Env("LOOPAI_TEST_DATA_DIR"), "spam"))
        {
            var batch = rt.ExecuteBatch("[{\"text\": \"free prize, claim now\"}, {\"nope\": 1}]");
            Assert(batch.StartsWith("[") && batch.Contains("\"output\":\"spam\""), batch);
            Assert(batch.Contains("\"error\":{\"code\":-1,\"kind\":\"invalid_input\""), batch);
            Assert(Throws(() => rt.ExecuteBatch("{}")).Code == LoopaiStatus.InvalidInput, "batch of an object");
            rt.Flush(TimeSpan.FromSeconds(5));
            var health = rt.HealthJson();
            Assert(health.Contains("\"status\":\"ok\"") && health.Contains("\"written\":2"), health);
            rt.Shutdown(TimeSpan.FromSeconds(5));
            Assert(Throws(() => rt.Execute("{\"text\": \"x\"}")).Code == LoopaiStatus.Closed, "after shutdown");
        }
    }

    private static void FourThreadsExecuteConcurrently()
    {
        using (var rt = new LoopaiRuntime(Env("LOOPAI_TEST_DATA_DIR"), "spam"))
        {
            var errors = new List<string>();
            var threads = new Thread[4];
            for (int t = 0; t < threads.Length; t++)
            {
                threads[t] = new Thread(() =>
                {
                    for (int i = 0; i < 250; i++)
                    {
                        try
                        {
                            var r = rt.Execute("{\"text\": \"Call me when you get this\"}");
                            if (r.Label != "ham")
                                lock (errors) errors.Add(r.Json);
                        }
                        catch (Exception e)
                        {
                            lock (errors) errors.Add(e.Message);
                        }
                    }
                });
                threads[t].Start();
            }
            foreach (var t in threads)
                t.Join();
            Assert(errors.Count == 0, string.Join("; ", errors));
            rt.Flush(TimeSpan.FromSeconds(10));
            Assert(rt.HealthJson().Contains("\"written\":1000"), rt.HealthJson());
        }
    }

    // ---- parity vectors: a minimal scanner for the generated, compact JSON lines --------

    private static int SkipValue(string s, int i)
    {
        if (s[i] == '"')
        {
            for (i++; s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            return i + 1;
        }
        if (s[i] == '{' || s[i] == '[')
        {
            int depth = 0;
            for (; i < s.Length; i++)
            {
                char c = s[i];
                if (c == '"') { i = SkipValue(s, i) - 1; }
                else if (c == '{' || c == '[') depth++;
                else if ((c == '}' || c == ']') && --depth == 0) return i + 1;
            }
            throw new Exception("unterminated value");
        }
        while (i < s.Length && s[i] != ',' && s[i] != '}' && s[i] != ']')
            i++;
        return i;
    }

    private static string Field(string obj, string key)
    {
        int i = 1;
        while (i < obj.Length && obj[i] == '"')
        {
            int keyEnd = SkipValue(obj, i);
            string k = obj.Substring(i + 1, keyEnd - i - 2);
            int valueEnd = SkipValue(obj, keyEnd + 1);
            if (k == key)
                return obj.Substring(keyEnd + 1, valueEnd - keyEnd - 1);
            i = valueEnd + 1;
        }
        throw new Exception("no key " + key + " in " + obj);
    }

    private static void ParityVectorsBitForBit()
    {
        int n = 0;
        using (var rt = new LoopaiRuntime(Env("LOOPAI_VECTORS_DATA_DIR"), "spam"))
        {
            foreach (var line in File.ReadAllLines(Env("LOOPAI_VECTORS")))
            {
                if (line.Trim().Length == 0)
                    continue;
                var r = rt.Execute(Field(line, "input"));
                Assert(r.OutputJson == Field(line, "output"), "vector " + n + " output " + r.Json);
                ulong want = ulong.Parse(LoopaiRuntime.DecodeJsonString(Field(line, "confidence_bits")),
                                         NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                ulong got = (ulong)BitConverter.DoubleToInt64Bits(r.Confidence);
                Assert(got == want, "vector " + n + " confidence bits " + got.ToString("x16") + " != " + want.ToString("x16"));
                // Same shortest round-trip text, hence the same bits.
                Assert(Field(r.Json, "scores") == Field(line, "scores"), "vector " + n + " scores " + r.Json);
                Assert(Field(r.Json, "status") == Field(line, "status"), "vector " + n + " status " + r.Json);
                n++;
            }
        }
        Assert(n >= 10, "only " + n + " vectors");
    }

    private static void ExplainVectorsMatchRust()
    {
        int n = 0;
        using (var rt = new LoopaiRuntime(Env("LOOPAI_EXPLAIN_DATA_DIR"), "spam"))
        {
            foreach (var line in File.ReadAllLines(Env("LOOPAI_EXPLAIN_VECTORS")))
            {
                if (line.Trim().Length == 0)
                    continue;
                int topK = int.Parse(Field(line, "top_k"), CultureInfo.InvariantCulture);
                var got = rt.Explain(Field(line, "input"), topK);
                // The same text, byte for byte, as the Rust core wrote it.
                Assert(got == Field(line, "explanation"), "vector " + n + " explanation " + got);
                n++;
            }
            Assert(Throws(() => rt.Explain("{\"text\": 1}")).Code == LoopaiStatus.InvalidInput, "bad input");
            Assert(Throws(() => rt.Explain("{\"text\": \"hi\"}", -1)).Code == LoopaiStatus.InvalidInput, "negative topK");
            Assert(rt.Explain("{\"text\": \"free prize\"}").StartsWith("{\"task\":\"spam\",\"version\":1,"), "default topK");
        }
        Assert(n >= 10, "only " + n + " vectors");
    }

    // ---- oracle callbacks ---------------------------------------------------------------

    private const string Abstaining = "{\"text\": \"ALL CAPS MESSAGE WITH NO SPAM WORDS\"}"; // spam at 0.57: abstains

    private static long Count(string json, string key)
    {
        return long.Parse(Field(json, key), CultureInfo.InvariantCulture);
    }

    /// "spam" when the input mentions a prize, else "ham"; checks the request, counts calls.
    private static Func<OracleRequest, OracleAnswer> KeywordOracle(int[] calls, List<string> problems)
    {
        return req =>
        {
            Interlocked.Increment(ref calls[0]);
            if (req.Task != "spam" || req.Labels.Length != 2 || req.Labels[0] != "spam" || req.Labels[1] != "ham"
                || req.Timeout <= TimeSpan.Zero || !req.InputJson.StartsWith("{") || req.OutputSchemaJson == null)
                lock (problems) problems.Add("unexpected request " + req.Json);
            return req.InputJson.Contains("prize") ? OracleAnswer.Label("spam", 1.5) : OracleAnswer.Label("ham");
        };
    }

    private static void OracleValidatesSampledExecutions()
    {
        var calls = new int[1];
        var problems = new List<string>();
        using (var rt = new LoopaiRuntime(Env("LOOPAI_TEST_DATA_DIR"), "spam",
                   "{\"sampling\": {\"rate\": 1, \"seed\": 7}}", KeywordOracle(calls, problems)))
        {
            // Program and oracle agree on the first two inputs and disagree on the third.
            for (int round = 0; round < 2; round++)
            {
                foreach (var input in new[] { "{\"text\": \"WIN a FREE prize, call now\"}",
                                              "{\"text\": \"Are you coming home for dinner?\"}", Abstaining })
                {
                    var r = rt.Execute(input);
                    Assert(r.Json.Contains("\"sampled\":true") && r.Source == "program", r.Json);
                }
            }
            rt.Flush(TimeSpan.FromSeconds(30));
            var m = rt.ValidationMetricsJson();
            Assert(Field(m, "oracle") == "\"in-process\"", m);
            Assert(Count(m, "validated") == 6 && Count(m, "matched") == 4 && Count(m, "oracle_errors") == 0, m);
            Assert(Volatile.Read(ref calls[0]) == 6, "calls " + calls[0]);
            var health = rt.HealthJson();
            Assert(Count(Field(health, "validation"), "validated") == 6, health);
            Assert(Field(health, "telemetry") == "null", health);
        }
        Assert(problems.Count == 0, string.Join("; ", problems));
    }

    private static void FailingOraclesAreCounted()
    {
        var oracles = new Dictionary<string, Func<OracleRequest, OracleAnswer>>
        {
            { "throws", req => { throw new InvalidOperationException("model offline"); } },
            { "null", req => null },
            { "bad label", req => OracleAnswer.Label("maybe spam") },
            { "bad json", req => OracleAnswer.FromJson("{nope") },
        };
        foreach (var kv in oracles)
        {
            using (var rt = new LoopaiRuntime(Env("LOOPAI_TEST_DATA_DIR"), "spam",
                       "{\"sampling\": {\"rate\": 1, \"seed\": 1}}", kv.Value))
            {
                for (int i = 0; i < 3; i++)
                    rt.Execute("{\"text\": \"WIN a FREE prize, call now\"}");
                rt.Flush(TimeSpan.FromSeconds(30));
                var m = rt.ValidationMetricsJson();
                Assert(Count(m, "oracle_errors") == 3 && Count(m, "validated") == 0, kv.Key + ": " + m);
            }
        }
    }

    private static void OracleAnswersAbstentionsInTheCascade()
    {
        const string config = "{\"execution\": {\"fallback\": \"oracle\", \"timeout_ms\": 30000}, \"sampling\": {\"rate\": 0}}";
        var calls = new int[1];
        var problems = new List<string>();
        using (var rt = new LoopaiRuntime(Env("LOOPAI_TEST_DATA_DIR"), "spam", config, KeywordOracle(calls, problems)))
        {
            var threads = new Thread[4];
            for (int t = 0; t < threads.Length; t++)
            {
                threads[t] = new Thread(() =>
                {
                    for (int i = 0; i < 25; i++)
                    {
                        try
                        {
                            var r = rt.Execute(Abstaining);
                            if (r.Label != "ham" || r.Source != "oracle" || r.Status != "success")
                                lock (problems) problems.Add(r.Json);
                        }
                        catch (Exception e)
                        {
                            lock (problems) problems.Add(e.Message);
                        }
                    }
                });
                threads[t].Start();
            }
            foreach (var t in threads)
                t.Join();
            var m = rt.ValidationMetricsJson();
            Assert(Field(m, "fallback") == "true" && Count(m, "oracle_fallbacks") == 100
                   && Count(m, "oracle_fallback_failures") == 0, m);
            Assert(Volatile.Read(ref calls[0]) == 100, "calls " + calls[0]);
        }
        Assert(problems.Count == 0, string.Join("; ", problems));
        using (var rt = new LoopaiRuntime(Env("LOOPAI_TEST_DATA_DIR"), "spam", config,
                   req => { throw new TimeoutException("down"); }))
        {
            var r = rt.Execute(Abstaining);
            Assert(r.Label == "spam" && r.Status == "abstain" && r.Source == "program", r.Json);
            Assert(Count(rt.ValidationMetricsJson(), "oracle_fallback_failures") == 1, rt.ValidationMetricsJson());
        }
    }

    private static void OracleConstructorErrorsReleaseTheDelegate()
    {
        var dir = Env("LOOPAI_TEST_DATA_DIR");
        var e = Throws(() => new LoopaiRuntime(dir, "spam", null, null));
        Assert(e.Code == LoopaiStatus.Config && e.Message.Contains("oracle"), e.Message);
        int before = LoopaiRuntime.LiveOracles;
        Func<OracleRequest, OracleAnswer> oracle = req => OracleAnswer.Label("ham");
        e = Throws(() => new LoopaiRuntime(dir, "no-such-task", null, oracle));
        Assert(e.Code == LoopaiStatus.Artifact, e.Message);
        e = Throws(() => new LoopaiRuntime(dir, "spam", "{\"sampling\": 3}", oracle));
        Assert(e.Code == LoopaiStatus.Config, e.Message);
        Assert(LoopaiRuntime.LiveOracles == before, "a failed constructor kept its oracle");
        var rt = new LoopaiRuntime(dir, "spam", null, oracle);
        Assert(LoopaiRuntime.LiveOracles == before + 1, "live oracles " + LoopaiRuntime.LiveOracles);
        rt.Dispose();
        Assert(LoopaiRuntime.LiveOracles == before, "Dispose did not release the oracle");
        Assert(Throws(() => rt.ValidationMetricsJson()).Code == LoopaiStatus.Closed, "after Dispose");
    }

    // ---- canary rollout ------------------------------------------------------------------

    /// LOOPAI_ROLLOUT_DATA_DIR has v1 active and v2, v3 installed (scripts/test-bindings.sh);
    /// this test is its only user and leaves v2 active, v3 rolled back.
    private static void RolloutRoutesByKeyPromotesAndRollsBack()
    {
        var dir = Env("LOOPAI_ROLLOUT_DATA_DIR");
        var rt = new LoopaiRuntime(dir, "spam", "{\"rollout\": {\"stages\": [0.5, 1.0]}}");
        using (rt)
        {
            Assert(rt.Rollout() == null && rt.RolloutJson() == "null", "before any rollout: " + rt.RolloutJson());
            Assert(rt.AbortRollout() == null, "nothing to abort");
            var e = Throws(() => rt.Promote());
            Assert(e.Code == LoopaiStatus.Artifact && e.Message.Contains("no rollout in progress"), e.Message);
            Assert(Throws(() => rt.BeginRollout(9)).Code == LoopaiStatus.Artifact, "not installed");
            Assert(Throws(() => rt.BeginRollout(1)).Code == LoopaiStatus.Artifact, "the active version");

            rt.BeginRollout(2);
            var s = rt.Rollout();
            Assert(s != null && s.State == RolloutState.InProgress && s.StateName == "in_progress", rt.RolloutJson());
            Assert(s.StableVersion == 1 && s.CanaryVersion == 2 && s.Stage == 0 && s.Fraction == 0.5, s.Json);
            Assert(s.Stages.Length == 2 && s.Stages[0] == 0.5 && s.Stages[1] == 1.0, s.Json);
            Assert(s.Stable.Version == 1 && s.Canary.Version == 2 && s.Canary.ErrorRate == null, s.Json);
            Assert(s.StartedAt.Year >= 2024 && s.StartedAt.Offset == TimeSpan.Zero, s.Json);
            Assert(s.RecentEvents.Length >= 1 && s.RecentEvents[0].Kind == "started"
                   && s.RecentEvents[0].CanaryVersion == 2, s.Json);
            Assert(s.Comparisons.Length >= 2 && s.Comparisons[0].Metric == "error_rate", s.Json);

            var served = new int[3];
            for (int i = 0; i < 64; i++)
            {
                var key = "user-" + i;
                var first = rt.ExecuteWithKey("{\"text\": \"hello\"}", key);
                var again = rt.ExecuteWithKey(System.Text.Encoding.UTF8.GetBytes("{\"text\": \"WIN a FREE prize, call now\"}"), key);
                Assert(first.Version == again.Version, key + ": v" + first.Version + " then v" + again.Version);
                Assert(first.Version == 1 || first.Version == 2, first.Json);
                served[first.Version]++;
            }
            Assert(served[1] > 0 && served[2] > 0, "served " + served[1] + " by v1, " + served[2] + " by v2");
            rt.Flush(TimeSpan.FromSeconds(30)); // the arms count an execution once it is in the log
            s = rt.Rollout();
            Assert(s.Canary.Executions == (ulong)(2 * served[2]) && s.Stable.Executions == (ulong)(2 * served[1]), s.Json);

            e = Throws(() => rt.ExecuteWithKey("{\"text\": \"x\"}", null));
            Assert(e.Code == LoopaiStatus.InvalidInput, e.Message);
            e = Throws(() => rt.ExecuteWithKey("{\"text\": \"x\"}", "us\0er"));
            Assert(e.Code == LoopaiStatus.InvalidInput, e.Message);
            e = Throws(() => rt.ExecuteWithKey("{\"text\": ", "user-1"));
            Assert(e.Code == LoopaiStatus.InvalidInput, e.Message);
            e = Throws(() => rt.ExecuteWithKey((string)null, "user-1"));
            Assert(e.Code == LoopaiStatus.InvalidInput, e.Message);

            Assert(rt.Promote() == 2, "promote");
            Assert(rt.ActiveVersion == 2, "active version " + rt.ActiveVersion);
            Assert(rt.ExecuteWithKey("{\"text\": \"hello\"}", "user-0").Version == 2, "after promote");
            s = rt.Rollout();
            Assert(s.State == RolloutState.Promoted && s.Fraction == 1.0, s.Json);

            rt.BeginRollout(3);
            Assert(rt.AbortRollout() == 3, "abort");
            Assert(rt.ActiveVersion == 2, "active version " + rt.ActiveVersion);
            s = rt.Rollout();
            Assert(s.State == RolloutState.RolledBack && s.StableVersion == 2 && s.CanaryVersion == 3
                   && s.Fraction == 0.0, s.Json);
            Assert(s.RecentEvents[s.RecentEvents.Length - 1].Kind == "rolled_back", s.Json);
            Assert(rt.AbortRollout() == null, "nothing left to abort");
            e = Throws(() => rt.BeginRollout(3));
            Assert(e.Code == LoopaiStatus.Artifact && e.Message.Contains("rolled back"), e.Message);
            Assert(Field(rt.HealthJson(), "rollout").StartsWith("{\"state\":\"rolled_back\""), rt.HealthJson());
        }
        Assert(Throws(() => rt.BeginRollout(3)).Code == LoopaiStatus.Closed, "after Dispose");
        Assert(Throws(() => rt.ExecuteWithKey("{\"text\": \"x\"}", "k")).Code == LoopaiStatus.Closed, "after Dispose");
        Assert(Throws(() => rt.Rollout()).Code == LoopaiStatus.Closed, "after Dispose");
    }

    private static int Main()
    {
        Run("execute_returns_results", ExecuteReturnsResults);
        Run("errors_carry_their_code", ErrorsCarryTheirCode);
        Run("dispose_is_idempotent_and_later_calls_are_closed", DisposeIsIdempotentAndLaterCallsAreClosed);
        Run("batch_flush_health_shutdown", BatchFlushHealthShutdown);
        Run("four_threads_execute_concurrently", FourThreadsExecuteConcurrently);
        Run("parity_vectors_bit_for_bit", ParityVectorsBitForBit);
        Run("explain_vectors_match_rust", ExplainVectorsMatchRust);
        Run("oracle_validates_sampled_executions", OracleValidatesSampledExecutions);
        Run("failing_oracles_are_counted", FailingOraclesAreCounted);
        Run("oracle_answers_abstentions_in_the_cascade", OracleAnswersAbstentionsInTheCascade);
        Run("oracle_constructor_errors_release_the_delegate", OracleConstructorErrorsReleaseTheDelegate);
        Run("rollout_routes_by_key_promotes_and_rolls_back", RolloutRoutesByKeyPromotesAndRollsBack);
        Console.WriteLine("csharp: " + passed + " passed, " + failed + " failed");
        return failed == 0 ? 0 : 1;
    }
}
