// Loopai for .NET and Mono: runs Loopai programs in-process through libloopai (the Loopai
// C API, include/loopai.h). Compile this file into your project; libloopai.so must be on the
// library search path (LD_LIBRARY_PATH, or next to the application).
//
//   using (var rt = new LoopaiRuntime("/var/lib/loopai", "spam")) {
//       var r = rt.Execute("{\"text\": \"WIN a FREE prize\"}");
//       Console.WriteLine(r.Label + " " + r.Confidence);
//   }
//
// A LoopaiRuntime may be used by many threads at once. Dispose it when done: that flushes the
// execution log (at most 5 s); Dispose waits for calls in progress on other threads (the
// SafeHandle is reference-counted across native calls), and later calls throw a
// LoopaiException with Code == LoopaiStatus.Closed. Every failure is a LoopaiException
// carrying the stable status code.
//
// An oracle (the reference model sampled executions are validated against, and that
// execution.fallback: oracle asks when the program abstains) can be a managed function:
//
//   Func<OracleRequest, OracleAnswer> oracle = req =>
//       OracleAnswer.Label(req.InputJson.Contains("prize") ? "spam" : "ham");
//   using (var rt = new LoopaiRuntime("/var/lib/loopai", "spam", null, oracle)) { ... }
//
// A new version installed without activation is handed over by a canary rollout
// (docs/rollout.md): BeginRollout(version), then Promote() or AbortRollout(), with Rollout()
// showing where it stands; ExecuteWithKey(input, userId) keeps each user on one version.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;

namespace Loopai
{
    /// <summary>libloopai status codes (stable; the C API's LOOPAI_* macros).</summary>
    public enum LoopaiStatus
    {
        Ok = 0,
        InvalidInput = -1,
        Program = -2,
        Schema = -3,
        InvalidOutput = -4,
        Artifact = -5,
        Config = -6,
        Io = -7,
        Timeout = -8,
        Closed = -9,
        Internal = -10,
        Oracle = -11,
    }

    /// <summary>An error reported by libloopai: the status code and a message naming what is wrong.</summary>
    public class LoopaiException : Exception
    {
        /// <summary>The status code.</summary>
        public LoopaiStatus Code { get; private set; }

        /// <summary>The code's stable name ("invalid_input", "closed", ...).</summary>
        public string Kind { get; private set; }

        public LoopaiException(LoopaiStatus code, string message)
            : base(LoopaiRuntime.StatusName(code) + ": " + message)
        {
            Code = code;
            Kind = LoopaiRuntime.StatusName(code);
        }
    }

    /// <summary>The result of one execution. Plain managed data: nothing to dispose.</summary>
    public sealed class LoopaiResult
    {
        /// <summary>The whole result as JSON (execution_id, output, confidence, scores, version, latency_ms, status, source, sampled, decided_by).</summary>
        public string Json { get; internal set; }

        /// <summary>The output as JSON: a label with its quotes ("\"spam\""), an object, or "null".</summary>
        public string OutputJson { get; internal set; }

        /// <summary>The confidence in [0, 1], exactly as computed by the runtime.</summary>
        public double Confidence { get; internal set; }

        /// <summary>The artifact version that produced the result.</summary>
        public uint Version { get; internal set; }

        /// <summary>The output label when the output is a JSON string, else null.</summary>
        public string Label
        {
            get { return LoopaiRuntime.DecodeJsonString(OutputJson); }
        }

        /// <summary>"success", or "abstain" when the program's confidence is below its threshold (and no oracle answered).</summary>
        public string Status
        {
            get { return LoopaiRuntime.DecodeJsonString(JsonText.Member(Json, "status")); }
        }

        /// <summary>"program", or "oracle" when the program abstained and execution.fallback: oracle answered.</summary>
        public string Source
        {
            get { return LoopaiRuntime.DecodeJsonString(JsonText.Member(Json, "source")); }
        }
    }

    /// <summary>
    /// What the oracle is asked (docs/oracle.md): the task, the allowed answers and one input.
    /// </summary>
    public sealed class OracleRequest
    {
        /// <summary>The whole request document as JSON.</summary>
        public string Json { get; private set; }

        /// <summary>The task id.</summary>
        public string Task { get; private set; }

        /// <summary>The task description (may be empty).</summary>
        public string Description { get; private set; }

        /// <summary>The allowed labels of a classification (empty for extraction).</summary>
        public string[] Labels { get; private set; }

        /// <summary>The task's output schema as JSON, or "null".</summary>
        public string OutputSchemaJson { get; private set; }

        /// <summary>The input object as JSON, exactly as given to Execute.</summary>
        public string InputJson { get; private set; }

        /// <summary>How long the runtime waits for the answer.</summary>
        public TimeSpan Timeout { get; private set; }

        internal static OracleRequest Parse(string json)
        {
            var members = JsonText.Members(json);
            if (members == null)
                throw new FormatException("the oracle request is not a JSON object");
            return new OracleRequest
            {
                Json = json,
                Task = LoopaiRuntime.DecodeJsonString(Get(members, "task")),
                Description = LoopaiRuntime.DecodeJsonString(Get(members, "description")),
                Labels = JsonText.StringArray(Get(members, "labels")),
                OutputSchemaJson = Get(members, "output_schema"),
                InputJson = Get(members, "input"),
                Timeout = TimeSpan.FromMilliseconds(
                    double.Parse(Get(members, "timeout_ms"), NumberStyles.Float, CultureInfo.InvariantCulture)),
            };
        }

        private static string Get(Dictionary<string, string> members, string key)
        {
            string value;
            if (!members.TryGetValue(key, out value))
                throw new FormatException("the oracle request has no \"" + key + "\"");
            return value;
        }
    }

    /// <summary>An oracle's answer: a label, or a JSON object for extraction tasks.</summary>
    public sealed class OracleAnswer
    {
        /// <summary>The output as JSON.</summary>
        public string OutputJson { get; private set; }

        /// <summary>What the call cost, in the provider's units (0 if unknown).</summary>
        public double Cost { get; private set; }

        /// <summary>A label (one of the request's Labels).</summary>
        public static OracleAnswer Label(string label, double cost = 0)
        {
            if (label == null)
                throw new ArgumentNullException("label");
            return new OracleAnswer { OutputJson = JsonText.EncodeString(label), Cost = cost };
        }

        /// <summary>An output given as JSON (for extraction: an object matching the output schema).</summary>
        public static OracleAnswer FromJson(string outputJson, double cost = 0)
        {
            if (outputJson == null)
                throw new ArgumentNullException("outputJson");
            return new OracleAnswer { OutputJson = outputJson, Cost = cost };
        }

        /// <summary>The reply document: {"output": ..., "cost": ...}.</summary>
        internal string ToReplyJson()
        {
            if (double.IsNaN(Cost) || double.IsInfinity(Cost))
                throw new ArgumentException("cost must be a finite number, got " + Cost);
            return "{\"output\": " + OutputJson + ", \"cost\": " + Cost.ToString("R", CultureInfo.InvariantCulture) + "}";
        }
    }

    /// <summary>Where a canary rollout stands.</summary>
    public enum RolloutState
    {
        /// <summary>A state this binding does not know (written by a newer libloopai).</summary>
        Unknown = 0,
        /// <summary>"in_progress": the canary serves its stage's share; decisions are pending.</summary>
        InProgress,
        /// <summary>"promoted": the canary is the active version.</summary>
        Promoted,
        /// <summary>"rolled_back": the stable version stays active; the canary is not rolled out again automatically.</summary>
        RolledBack,
        /// <summary>"aborted": superseded by a newer canary, or another version was activated by hand.</summary>
        Aborted,
    }

    /// <summary>One arm's statistics over a rollout (and over its current stage).</summary>
    public sealed class ArmStats
    {
        /// <summary>The artifact version of this arm.</summary>
        public uint Version { get; private set; }
        /// <summary>Executions served since the rollout started.</summary>
        public ulong Executions { get; private set; }
        /// <summary>Of those, errors.</summary>
        public ulong Errors { get; private set; }
        /// <summary>Of those, abstentions.</summary>
        public ulong Abstains { get; private set; }
        /// <summary>Validations against the oracle of executions served by this arm.</summary>
        public ulong Validations { get; private set; }
        /// <summary>Of those, disagreements with the oracle.</summary>
        public ulong Mismatches { get; private set; }
        /// <summary>Errors per execution; null without data.</summary>
        public double? ErrorRate { get; private set; }
        /// <summary>Abstentions per execution; null without data.</summary>
        public double? AbstainRate { get; private set; }
        /// <summary>1 - mismatches per validation; null without data.</summary>
        public double? MatchRate { get; private set; }
        /// <summary>99th percentile of execution latency (upper bound of its ~19% histogram bucket), in ms; null without data.</summary>
        public double? LatencyP99Ms { get; private set; }
        /// <summary>Executions in the current stage.</summary>
        public ulong StageExecutions { get; private set; }
        /// <summary>Validations in the current stage.</summary>
        public ulong StageValidations { get; private set; }

        internal static ArmStats Parse(string json)
        {
            var m = JsonText.ParseObject(json);
            return new ArmStats
            {
                Version = (uint)JsonText.GetUInt(m, "version"),
                Executions = JsonText.GetUInt(m, "executions"),
                Errors = JsonText.GetUInt(m, "errors"),
                Abstains = JsonText.GetUInt(m, "abstains"),
                Validations = JsonText.GetUInt(m, "validations"),
                Mismatches = JsonText.GetUInt(m, "mismatches"),
                ErrorRate = JsonText.GetNullableDouble(m, "error_rate"),
                AbstainRate = JsonText.GetNullableDouble(m, "abstain_rate"),
                MatchRate = JsonText.GetNullableDouble(m, "match_rate"),
                LatencyP99Ms = JsonText.GetNullableDouble(m, "latency_p99_ms"),
                StageExecutions = JsonText.GetUInt(m, "stage_executions"),
                StageValidations = JsonText.GetUInt(m, "stage_validations"),
            };
        }
    }

    /// <summary>
    /// One compared metric of a rollout: both arms' rates and the confidence sequence for
    /// their difference, canary - stable (docs/rollout.md).
    /// </summary>
    public sealed class MetricComparison
    {
        /// <summary>"error_rate", "mismatch_rate" or "abstain_rate".</summary>
        public string Metric { get; private set; }
        /// <summary>The stable arm's rate over the rollout; null without data.</summary>
        public double? StableRate { get; private set; }
        /// <summary>The canary's rate over the rollout; null without data.</summary>
        public double? CanaryRate { get; private set; }
        /// <summary>Lower end of the confidence sequence for canary - stable.</summary>
        public double DifferenceLower { get; private set; }
        /// <summary>Upper end of the confidence sequence for canary - stable.</summary>
        public double DifferenceUpper { get; private set; }
        /// <summary>How much worse the canary may be: promotion needs DifferenceUpper below it.</summary>
        public double Margin { get; private set; }
        /// <summary>The canary is rolled back when DifferenceLower is above this.</summary>
        public double RollbackAbove { get; private set; }

        internal static MetricComparison Parse(string json)
        {
            var m = JsonText.ParseObject(json);
            return new MetricComparison
            {
                Metric = JsonText.GetString(m, "metric"),
                StableRate = JsonText.GetNullableDouble(m, "stable_rate"),
                CanaryRate = JsonText.GetNullableDouble(m, "canary_rate"),
                DifferenceLower = JsonText.GetDouble(m, "difference_lower"),
                DifferenceUpper = JsonText.GetDouble(m, "difference_upper"),
                Margin = JsonText.GetDouble(m, "margin"),
                RollbackAbove = JsonText.GetDouble(m, "rollback_above"),
            };
        }
    }

    /// <summary>One event of a rollout.</summary>
    public sealed class RolloutEvent
    {
        /// <summary>When it happened.</summary>
        public DateTimeOffset At { get; private set; }
        /// <summary>"started", "resumed", "stage_advanced", "promoted", "rolled_back" or "aborted" ("other" from a newer writer).</summary>
        public string Kind { get; private set; }
        /// <summary>The stable version of the rollout.</summary>
        public uint StableVersion { get; private set; }
        /// <summary>The canary version.</summary>
        public uint CanaryVersion { get; private set; }
        /// <summary>The stage index after the event.</summary>
        public int Stage { get; private set; }
        /// <summary>The canary's share of executions after the event.</summary>
        public double Fraction { get; private set; }
        /// <summary>Why (the decision's reason, or who asked).</summary>
        public string Reason { get; private set; }

        internal static RolloutEvent Parse(string json)
        {
            var m = JsonText.ParseObject(json);
            return new RolloutEvent
            {
                At = JsonText.GetTimestamp(m, "at"),
                Kind = JsonText.GetString(m, "kind"),
                StableVersion = (uint)JsonText.GetUInt(m, "stable_version"),
                CanaryVersion = (uint)JsonText.GetUInt(m, "canary_version"),
                Stage = (int)JsonText.GetUInt(m, "stage"),
                Fraction = JsonText.GetDouble(m, "fraction"),
                Reason = JsonText.GetString(m, "reason"),
            };
        }
    }

    /// <summary>
    /// The state of a task's rollout: the one in progress, or the last one with its outcome
    /// (LoopaiRuntime.Rollout, docs/rollout.md). Plain managed data.
    /// </summary>
    public sealed class RolloutStatus
    {
        /// <summary>The whole document as JSON, as libloopai wrote it.</summary>
        public string Json { get; private set; }
        /// <summary>Where the rollout stands.</summary>
        public RolloutState State { get; private set; }
        /// <summary>The state as written in the JSON ("in_progress", "promoted", "rolled_back", "aborted").</summary>
        public string StateName { get; private set; }
        /// <summary>The version serving the rest of the executions.</summary>
        public uint StableVersion { get; private set; }
        /// <summary>The version being rolled out.</summary>
        public uint CanaryVersion { get; private set; }
        /// <summary>Index of the current stage in Stages.</summary>
        public int Stage { get; private set; }
        /// <summary>The canary's share of executions at each stage.</summary>
        public double[] Stages { get; private set; }
        /// <summary>The canary's share now (Stages[Stage] while in progress, 1 once promoted, 0 once rolled back or aborted).</summary>
        public double Fraction { get; private set; }
        /// <summary>When the rollout started.</summary>
        public DateTimeOffset StartedAt { get; private set; }
        /// <summary>The stable arm's statistics.</summary>
        public ArmStats Stable { get; private set; }
        /// <summary>The canary's statistics.</summary>
        public ArmStats Canary { get; private set; }
        /// <summary>The compared metrics, with their confidence sequences.</summary>
        public MetricComparison[] Comparisons { get; private set; }
        /// <summary>The reason of the last decision (what it waits for, or why it ended).</summary>
        public string Decision { get; private set; }
        /// <summary>The last events, oldest first.</summary>
        public RolloutEvent[] RecentEvents { get; private set; }

        internal static RolloutStatus Parse(string json)
        {
            var m = JsonText.ParseObject(json);
            var state = JsonText.GetString(m, "state");
            return new RolloutStatus
            {
                Json = json,
                State = ParseState(state),
                StateName = state,
                StableVersion = (uint)JsonText.GetUInt(m, "stable_version"),
                CanaryVersion = (uint)JsonText.GetUInt(m, "canary_version"),
                Stage = (int)JsonText.GetUInt(m, "stage"),
                Stages = Array.ConvertAll<string, double>(JsonText.Items(JsonText.Get(m, "stages")), JsonText.ParseDouble),
                Fraction = JsonText.GetDouble(m, "fraction"),
                StartedAt = JsonText.GetTimestamp(m, "started_at"),
                Stable = ArmStats.Parse(JsonText.Get(m, "stable")),
                Canary = ArmStats.Parse(JsonText.Get(m, "canary")),
                Comparisons = Array.ConvertAll<string, MetricComparison>(JsonText.Items(JsonText.Get(m, "comparisons")), MetricComparison.Parse),
                Decision = JsonText.GetString(m, "decision"),
                RecentEvents = Array.ConvertAll<string, RolloutEvent>(JsonText.Items(JsonText.Get(m, "recent_events")), RolloutEvent.Parse),
            };
        }

        private static RolloutState ParseState(string state)
        {
            switch (state)
            {
                case "in_progress": return RolloutState.InProgress;
                case "promoted": return RolloutState.Promoted;
                case "rolled_back": return RolloutState.RolledBack;
                case "aborted": return RolloutState.Aborted;
                default: return RolloutState.Unknown;
            }
        }
    }

    /// <summary>A minimal reader of the compact JSON libloopai writes (no dependency).</summary>
    internal static class JsonText
    {
        /// <summary>The raw JSON text of top-level member <paramref name="key"/> of an object, or null.</summary>
        internal static string Member(string json, string key)
        {
            var members = Members(json);
            string value;
            return members != null && members.TryGetValue(key, out value) ? value : null;
        }

        /// <summary>The top-level members of a JSON object (name → raw value text), or null if it is not one.</summary>
        internal static Dictionary<string, string> Members(string json)
        {
            if (json == null)
                return null;
            try
            {
                int i = SkipSpace(json, 0);
                if (i >= json.Length || json[i] != '{')
                    return null;
                var members = new Dictionary<string, string>();
                i = SkipSpace(json, i + 1);
                if (json[i] == '}')
                    return members;
                while (true)
                {
                    int keyEnd = SkipValue(json, i);
                    string key = LoopaiRuntime.DecodeJsonString(json.Substring(i, keyEnd - i));
                    i = SkipSpace(json, keyEnd);
                    if (key == null || json[i] != ':')
                        return null;
                    int start = SkipSpace(json, i + 1);
                    int end = SkipValue(json, start);
                    members[key] = json.Substring(start, end - start).TrimEnd();
                    i = SkipSpace(json, end);
                    if (json[i] == '}')
                        return members;
                    if (json[i] != ',')
                        return null;
                    i = SkipSpace(json, i + 1);
                }
            }
            catch (IndexOutOfRangeException)
            {
                return null;
            }
            catch (ArgumentOutOfRangeException)
            {
                return null;
            }
        }

        /// <summary>The strings of a JSON array of strings.</summary>
        internal static string[] StringArray(string json)
        {
            var items = new List<string>();
            int i = SkipSpace(json, 0);
            if (json[i] != '[')
                throw new FormatException("expected a JSON array, got " + json);
            i = SkipSpace(json, i + 1);
            while (json[i] != ']')
            {
                int end = SkipValue(json, i);
                var item = LoopaiRuntime.DecodeJsonString(json.Substring(i, end - i).TrimEnd());
                if (item == null)
                    throw new FormatException("expected an array of strings, got " + json);
                items.Add(item);
                i = SkipSpace(json, end);
                if (json[i] == ',')
                    i = SkipSpace(json, i + 1);
            }
            return items.ToArray();
        }

        /// <summary>The raw JSON texts of the items of a JSON array.</summary>
        internal static string[] Items(string json)
        {
            var items = new List<string>();
            int i = SkipSpace(json, 0);
            if (i >= json.Length || json[i] != '[')
                throw new FormatException("expected a JSON array, got " + json);
            i = SkipSpace(json, i + 1);
            while (json[i] != ']')
            {
                int end = SkipValue(json, i);
                items.Add(json.Substring(i, end - i).TrimEnd());
                i = SkipSpace(json, end);
                if (json[i] == ',')
                    i = SkipSpace(json, i + 1);
                else if (json[i] != ']')
                    throw new FormatException("malformed JSON array " + json);
            }
            return items.ToArray();
        }

        /// <summary>The members of a JSON object; throws FormatException if it is not one.</summary>
        internal static Dictionary<string, string> ParseObject(string json)
        {
            var members = Members(json);
            if (members == null)
                throw new FormatException("expected a JSON object, got " + json);
            return members;
        }

        /// <summary>The raw JSON text of member <paramref name="key"/>; throws FormatException if it is missing.</summary>
        internal static string Get(Dictionary<string, string> members, string key)
        {
            string value;
            if (!members.TryGetValue(key, out value))
                throw new FormatException("no \"" + key + "\" in the JSON object");
            return value;
        }

        internal static string GetString(Dictionary<string, string> members, string key)
        {
            var value = LoopaiRuntime.DecodeJsonString(Get(members, key));
            if (value == null)
                throw new FormatException("\"" + key + "\" is not a JSON string");
            return value;
        }

        internal static ulong GetUInt(Dictionary<string, string> members, string key)
        {
            return ulong.Parse(Get(members, key), NumberStyles.None, CultureInfo.InvariantCulture);
        }

        internal static double ParseDouble(string json)
        {
            return double.Parse(json, NumberStyles.Float, CultureInfo.InvariantCulture);
        }

        internal static double GetDouble(Dictionary<string, string> members, string key)
        {
            return ParseDouble(Get(members, key));
        }

        internal static double? GetNullableDouble(Dictionary<string, string> members, string key)
        {
            var value = Get(members, key);
            return value == "null" ? (double?)null : ParseDouble(value);
        }

        /// <summary>An RFC 3339 timestamp such as "2026-11-25T04:23:00.112Z".</summary>
        internal static DateTimeOffset GetTimestamp(Dictionary<string, string> members, string key)
        {
            return DateTimeOffset.Parse(GetString(members, key), CultureInfo.InvariantCulture,
                DateTimeStyles.AssumeUniversal);
        }

        /// <summary>A JSON string literal for <paramref name="s"/>.</summary>
        internal static string EncodeString(string s)
        {
            var sb = new StringBuilder("\"");
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    default:
                        if (c < 0x20)
                            sb.Append("\\u").Append(((int)c).ToString("x4"));
                        else
                            sb.Append(c);
                        break;
                }
            }
            return sb.Append('"').ToString();
        }

        private static int SkipSpace(string s, int i)
        {
            while (i < s.Length && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
                i++;
            return i;
        }

        /// <summary>The index just past the JSON value starting at <paramref name="i"/>.</summary>
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
                    if (c == '"')
                        i = SkipValue(s, i) - 1;
                    else if (c == '{' || c == '[')
                        depth++;
                    else if ((c == '}' || c == ']') && --depth == 0)
                        return i + 1;
                }
                throw new FormatException("unterminated JSON value");
            }
            while (i < s.Length && s[i] != ',' && s[i] != '}' && s[i] != ']')
                i++;
            return i;
        }
    }

    /// <summary>A Loopai runtime for one task.</summary>
    public sealed class LoopaiRuntime : IDisposable
    {
        private readonly RuntimeHandle handle;

        /// <summary>
        /// Opens task <paramref name="taskId"/> in <paramref name="dataDir"/>.
        /// <paramref name="configJson"/> is null (use dataDir/config/deployment.yaml if it
        /// exists, else the defaults) or a JSON object with deployment.yaml's keys.
        /// </summary>
        public LoopaiRuntime(string dataDir, string taskId, string configJson = null)
        {
            var rt = IntPtr.Zero;
            var err = IntPtr.Zero;
            int status = Native.loopai_runtime_new(
                Utf8Z("dataDir", dataDir), Utf8Z("taskId", taskId),
                configJson == null ? null : Utf8Z("configJson", configJson), ref rt, ref err);
            Check(status, err);
            handle = new RuntimeHandle(rt);
        }

        /// <summary>
        /// Opens task <paramref name="taskId"/> like the constructor above, with
        /// <paramref name="oracle"/> as the runtime's oracle: it validates sampled executions
        /// in the background and, with execution.fallback: oracle, answers when the program
        /// abstains. It wins over the configuration's oracle section.
        /// </summary>
        /// <remarks>
        /// The oracle is called from the runtime's validation threads and, with the
        /// fallback, from threads calling Execute, concurrently: it must be thread-safe. It
        /// should answer within request.Timeout. An exception (or a null answer, or an output
        /// that is not an allowed label / an object matching the output schema) is an oracle
        /// error: counted in the validation metrics (oracle_errors, oracle_fallback_failures),
        /// never thrown by Execute. It must not call Flush, Shutdown or Dispose on its own
        /// runtime. The runtime holds the delegate (through a GCHandle) until the library
        /// releases it: at Dispose, or when a call still running at Dispose returns.
        /// </remarks>
        public LoopaiRuntime(string dataDir, string taskId, string configJson, Func<OracleRequest, OracleAnswer> oracle)
        {
            if (oracle == null)
                throw new LoopaiException(LoopaiStatus.Config, "oracle is null");
            var dir = Utf8Z("dataDir", dataDir);
            var task = Utf8Z("taskId", taskId);
            var config = configJson == null ? null : Utf8Z("configJson", configJson);
            var rt = IntPtr.Zero;
            var err = IntPtr.Zero;
            // The library frees the GCHandle (FreeOracle) exactly once, also when this fails.
            var userData = GCHandle.ToIntPtr(GCHandle.Alloc(oracle));
            Interlocked.Increment(ref liveOracles);
            int status = Native.loopai_runtime_new_with_oracle(dir, task, config, OracleTrampoline,
                userData, FreeOracleTrampoline, ref rt, ref err);
            Check(status, err);
            handle = new RuntimeHandle(rt);
        }

        /// <summary>The number of managed oracles the library still holds (for tests).</summary>
        internal static int LiveOracles
        {
            get { return Volatile.Read(ref liveOracles); }
        }

        private static int liveOracles;

        // Static, so that the function pointers given to libloopai stay valid for the life of
        // the process, also for an oracle call still running after Dispose.
        private static readonly Native.OracleCallback OracleTrampoline = CallOracle;
        private static readonly Native.FreeCallback FreeOracleTrampoline = FreeOracle;

        private static int CallOracle(IntPtr userData, IntPtr requestJson, UIntPtr requestLen, IntPtr reply)
        {
            try
            {
                var oracle = (Func<OracleRequest, OracleAnswer>)GCHandle.FromIntPtr(userData).Target;
                var bytes = new byte[checked((int)(ulong)requestLen)];
                Marshal.Copy(requestJson, bytes, 0, bytes.Length);
                var answer = oracle(OracleRequest.Parse(Encoding.UTF8.GetString(bytes)));
                if (answer == null)
                    return ReplyError(reply, "the oracle returned null");
                var json = Encoding.UTF8.GetBytes(answer.ToReplyJson());
                return Native.loopai_oracle_reply_set(reply, json, (UIntPtr)json.Length);
            }
            catch (Exception e)
            {
                // An exception must not unwind into libloopai: it is an oracle error.
                return ReplyError(reply, "the oracle threw " + e.GetType().Name + ": " + e.Message);
            }
        }

        private static int ReplyError(IntPtr reply, string message)
        {
            try
            {
                var bytes = Encoding.UTF8.GetBytes(message);
                Native.loopai_oracle_reply_set_error(reply, bytes, (UIntPtr)bytes.Length);
            }
            catch (Exception)
            {
                // Nothing more to report: the non-zero status is the error.
            }
            return 1;
        }

        private static void FreeOracle(IntPtr userData)
        {
            try
            {
                GCHandle.FromIntPtr(userData).Free();
                Interlocked.Decrement(ref liveOracles);
            }
            catch (Exception)
            {
                // Never unwind into libloopai.
            }
        }

        /// <summary>The version of the loaded libloopai.</summary>
        public static string LibraryVersion
        {
            get { return FromUtf8(Native.loopai_version()); }
        }

        /// <summary>The stable name of a status code ("ok", "invalid_input", ..., "unknown").</summary>
        public static string StatusName(LoopaiStatus code)
        {
            return FromUtf8(Native.loopai_status_str((int)code));
        }

        /// <summary>Executes the active program on one input, a JSON object.</summary>
        public LoopaiResult Execute(string inputJson)
        {
            if (inputJson == null)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "inputJson is null");
            return Execute(Encoding.UTF8.GetBytes(inputJson));
        }

        /// <summary>Executes the active program on one input, UTF-8 JSON bytes.</summary>
        public LoopaiResult Execute(byte[] inputJson)
        {
            if (inputJson == null)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "inputJson is null");
            var res = IntPtr.Zero;
            var err = IntPtr.Zero;
            int status = Call(() => Native.loopai_runtime_execute(
                handle, inputJson, (UIntPtr)inputJson.Length, ref res, ref err));
            Check(status, err);
            return TakeResult(res);
        }

        /// <summary>
        /// Executes as Execute does, with the routing key of a canary rollout chosen by the
        /// caller (a user id, a session id): during a rollout the same key is served by the
        /// same version for the whole stage, and stays on the canary as its share grows
        /// (docs/rollout.md). The result's Version says which version served it. Without a
        /// rollout in progress the key is not used. A null key, or one containing a NUL
        /// character, throws (InvalidInput).
        /// </summary>
        public LoopaiResult ExecuteWithKey(string inputJson, string key)
        {
            if (inputJson == null)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "inputJson is null");
            return ExecuteWithKey(Encoding.UTF8.GetBytes(inputJson), key);
        }

        /// <summary>Executes UTF-8 JSON bytes as ExecuteWithKey(string, string) does.</summary>
        public LoopaiResult ExecuteWithKey(byte[] inputJson, string key)
        {
            if (inputJson == null)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "inputJson is null");
            if (key == null)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "key is null");
            if (key.IndexOf('\0') >= 0)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "key contains a NUL character");
            var keyZ = Encoding.UTF8.GetBytes(key + "\0");
            var res = IntPtr.Zero;
            var err = IntPtr.Zero;
            int status = Call(() => Native.loopai_runtime_execute_with_key(
                handle, inputJson, (UIntPtr)inputJson.Length, keyZ, ref res, ref err));
            Check(status, err);
            return TakeResult(res);
        }

        /// <summary>Copies a native result into a LoopaiResult and frees it.</summary>
        private static LoopaiResult TakeResult(IntPtr res)
        {
            using (var owned = new ResultHandle(res))
            {
                var ptr = owned.DangerousGetHandle();
                return new LoopaiResult
                {
                    Json = FromUtf8(Native.loopai_result_json(ptr)),
                    OutputJson = FromUtf8(Native.loopai_result_output_json(ptr)),
                    Confidence = Native.loopai_result_confidence(ptr),
                    Version = Native.loopai_result_version(ptr),
                };
            }
        }

        /// <summary>
        /// Executes a JSON array of inputs; returns a JSON array with, per input, the result
        /// object or {"error": {"code", "kind", "message"}}.
        /// </summary>
        public string ExecuteBatch(string inputsJson)
        {
            if (inputsJson == null)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "inputsJson is null");
            var bytes = Encoding.UTF8.GetBytes(inputsJson);
            var text = IntPtr.Zero;
            var err = IntPtr.Zero;
            int status = Call(() => Native.loopai_runtime_execute_batch(
                handle, bytes, (UIntPtr)bytes.Length, ref text, ref err));
            Check(status, err);
            using (var owned = new StringHandle(text))
                return FromUtf8(owned.DangerousGetHandle());
        }

        /// <summary>Makes every execution accepted so far durable, waiting at most <paramref name="timeout"/>.</summary>
        public void Flush(TimeSpan timeout)
        {
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_flush(handle, Millis(timeout), ref err)), err);
        }

        /// <summary>Flushes and stops the background thread; later executions throw (Closed). Dispose is still needed.</summary>
        public void Shutdown(TimeSpan timeout)
        {
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_shutdown(handle, Millis(timeout), ref err)), err);
        }

        /// <summary>The artifact version executing now.</summary>
        public uint ActiveVersion
        {
            get
            {
                uint v = 0;
                Call(() => { v = Native.loopai_runtime_active_version(handle); return 0; });
                return v;
            }
        }

        /// <summary>The number of contributions per class Explain lists by default.</summary>
        public const int DefaultExplainTopK = 10;

        /// <summary>
        /// Why the active program decides what it does on one input (UTF-8 JSON text): the
        /// decision path as JSON, {"task", "version", "output", "confidence", "abstained",
        /// "decided_by", "abstention", "decision"} — the rule that fired with the feature
        /// values its conditions saw, or a model's per-class scores with its topK largest
        /// contributions traced back to the n-grams and keywords of this input
        /// (docs/program-format.md, "Explanations"). Output and confidence are exactly what
        /// Execute returns; the active version is explained, never a canary; nothing is
        /// logged, sampled or counted. Throws as Execute does (InvalidInput).
        /// </summary>
        public string Explain(string inputJson, int topK = DefaultExplainTopK)
        {
            if (inputJson == null)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "inputJson is null");
            return Explain(Encoding.UTF8.GetBytes(inputJson), topK);
        }

        /// <summary>Explain, with the input as UTF-8 JSON bytes.</summary>
        public string Explain(byte[] inputJson, int topK = DefaultExplainTopK)
        {
            if (inputJson == null)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "inputJson is null");
            if (topK < 0)
                throw new LoopaiException(LoopaiStatus.InvalidInput, "topK must not be negative, got " + topK);
            var text = IntPtr.Zero;
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_explain(
                handle, inputJson, (UIntPtr)inputJson.Length, (uint)topK, ref text, ref err)), err);
            using (var owned = new StringHandle(text))
                return FromUtf8(owned.DangerousGetHandle());
        }

        /// <summary>The health as JSON: status ("ok" or "degraded"), task, active_version, dataset counters, telemetry (null when off), validation, rollout (as RolloutJson).</summary>
        public string HealthJson()
        {
            var text = IntPtr.Zero;
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_health_json(handle, ref text, ref err)), err);
            using (var owned = new StringHandle(text))
                return FromUtf8(owned.DangerousGetHandle());
        }

        /// <summary>
        /// Validation against the oracle and oracle-fallback counters as JSON: oracle
        /// ("in-process", "http ...", or null), comparison, fallback, queued, validated,
        /// matched, match_rate, skipped_queue_full, skipped_no_oracle, skipped_shutdown,
        /// oracle_errors, oracle_fallbacks, oracle_fallback_failures, versions. Flush first to
        /// wait for the samples queued so far.
        /// </summary>
        public string ValidationMetricsJson()
        {
            var text = IntPtr.Zero;
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_validation_metrics_json(handle, ref text, ref err)), err);
            using (var owned = new StringHandle(text))
                return FromUtf8(owned.DangerousGetHandle());
        }

        /// <summary>
        /// Starts a canary rollout of installed version <paramref name="version"/>: it serves
        /// the first stage's share of executions (rollout.stages, 10% by default, sticky per
        /// routing key) next to the active version, and is promoted stage by stage or rolled
        /// back by the runtime's sequential test (docs/rollout.md). A rollout of another
        /// version in progress is superseded; beginning the rollout of the canary in progress
        /// does nothing. With rollout.enabled: false the version is activated at once.
        /// </summary>
        /// <exception cref="LoopaiException">Artifact when the version is not installed, is
        /// corrupt, is the active version, or was rolled back before; Program or Schema when
        /// it does not compile; Io when rollout.json cannot be written.</exception>
        public void BeginRollout(uint version)
        {
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_begin_rollout(handle, version, ref err)), err);
        }

        /// <summary>
        /// Finishes the rollout in progress now: its canary becomes the active version and
        /// serves every execution. Returns that version.
        /// </summary>
        /// <exception cref="LoopaiException">Artifact when no rollout is in progress, or the
        /// activation failed (then the rollout goes on).</exception>
        public uint Promote()
        {
            uint version = 0;
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_promote(handle, ref version, ref err)), err);
            return version;
        }

        /// <summary>
        /// Rolls back the rollout in progress now: the canary stops serving, the stable
        /// version stays active, and the canary is marked rolled back (BeginRollout refuses
        /// it from then on). Returns the canary's version, or null when no rollout was in
        /// progress (which is not an error).
        /// </summary>
        /// <exception cref="LoopaiException">Io when rollout.json cannot be written.</exception>
        public uint? AbortRollout()
        {
            uint version = 0;
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_abort_rollout(handle, ref version, ref err)), err);
            return version == 0 ? (uint?)null : version;
        }

        /// <summary>
        /// The rollout in progress, or the last one with its outcome, with live per-arm
        /// statistics and the current decision; null when the task never had a rollout.
        /// </summary>
        public RolloutStatus Rollout()
        {
            var json = RolloutJson();
            if (json == "null")
                return null;
            try
            {
                return RolloutStatus.Parse(json);
            }
            catch (FormatException e)
            {
                throw new LoopaiException(LoopaiStatus.Internal, "cannot parse the rollout status: " + e.Message);
            }
            catch (OverflowException e)
            {
                throw new LoopaiException(LoopaiStatus.Internal, "cannot parse the rollout status: " + e.Message);
            }
        }

        /// <summary>
        /// The rollout as JSON (state, stable_version, canary_version, stage, stages,
        /// fraction, started_at, stable, canary, comparisons, decision, recent_events), or
        /// "null" when the task never had a rollout.
        /// </summary>
        public string RolloutJson()
        {
            var text = IntPtr.Zero;
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_rollout_json(handle, ref text, ref err)), err);
            using (var owned = new StringHandle(text))
                return FromUtf8(owned.DangerousGetHandle());
        }

        /// <summary>Flushes the execution log (at most 5 s) and frees the runtime. Idempotent.</summary>
        public void Dispose()
        {
            handle.Dispose();
        }

        // ---- plumbing ----------------------------------------------------------------

        private static int Call(Func<int> f)
        {
            try
            {
                return f();
            }
            catch (ObjectDisposedException)
            {
                throw new LoopaiException(LoopaiStatus.Closed, "the LoopaiRuntime is disposed");
            }
        }

        private static void Check(int status, IntPtr err)
        {
            if (status == 0)
                return;
            string message = "";
            if (err != IntPtr.Zero)
            {
                using (var owned = new ErrorHandle(err))
                    message = FromUtf8(Native.loopai_error_message(owned.DangerousGetHandle()));
            }
            throw new LoopaiException((LoopaiStatus)status, message);
        }

        private static uint Millis(TimeSpan t)
        {
            double ms = t.TotalMilliseconds;
            if (ms <= 0)
                return 0;
            return ms >= uint.MaxValue ? uint.MaxValue : (uint)ms;
        }

        private static byte[] Utf8Z(string what, string s)
        {
            if (s == null)
                throw new LoopaiException(LoopaiStatus.Config, what + " is null");
            if (s.IndexOf('\0') >= 0)
                throw new LoopaiException(LoopaiStatus.Config, what + " contains a NUL character");
            var bytes = Encoding.UTF8.GetBytes(s);
            Array.Resize(ref bytes, bytes.Length + 1);
            return bytes;
        }

        internal static string FromUtf8(IntPtr p)
        {
            if (p == IntPtr.Zero)
                return null;
            int n = 0;
            while (Marshal.ReadByte(p, n) != 0)
                n++;
            var bytes = new byte[n];
            Marshal.Copy(p, bytes, 0, n);
            return Encoding.UTF8.GetString(bytes);
        }

        /// <summary>Decodes a JSON string literal; null if <paramref name="json"/> is not one.</summary>
        internal static string DecodeJsonString(string json)
        {
            if (json == null || json.Length < 2 || json[0] != '"' || json[json.Length - 1] != '"')
                return null;
            var sb = new StringBuilder();
            for (int i = 1; i < json.Length - 1; i++)
            {
                char c = json[i];
                if (c != '\\')
                {
                    sb.Append(c);
                    continue;
                }
                c = json[++i];
                switch (c)
                {
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'n': sb.Append('\n'); break;
                    case 'r': sb.Append('\r'); break;
                    case 't': sb.Append('\t'); break;
                    case 'u':
                        sb.Append((char)Convert.ToInt32(json.Substring(i + 1, 4), 16));
                        i += 4;
                        break;
                    default: sb.Append(c); break;
                }
            }
            return sb.ToString();
        }

        private sealed class RuntimeHandle : SafeHandle
        {
            internal RuntimeHandle(IntPtr p) : base(IntPtr.Zero, true) { SetHandle(p); }
            public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
            protected override bool ReleaseHandle() { Native.loopai_runtime_free(handle); return true; }
        }

        private sealed class ResultHandle : SafeHandle
        {
            internal ResultHandle(IntPtr p) : base(IntPtr.Zero, true) { SetHandle(p); }
            public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
            protected override bool ReleaseHandle() { Native.loopai_result_free(handle); return true; }
        }

        private sealed class ErrorHandle : SafeHandle
        {
            internal ErrorHandle(IntPtr p) : base(IntPtr.Zero, true) { SetHandle(p); }
            public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
            protected override bool ReleaseHandle() { Native.loopai_error_free(handle); return true; }
        }

        private sealed class StringHandle : SafeHandle
        {
            internal StringHandle(IntPtr p) : base(IntPtr.Zero, true) { SetHandle(p); }
            public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
            protected override bool ReleaseHandle() { Native.loopai_string_free(handle); return true; }
        }

        /// <summary>Every entry point of libloopai used by this binding.</summary>
        private static class Native
        {
            private const string Lib = "loopai";

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern IntPtr loopai_version();

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern IntPtr loopai_status_str(int code);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_new(byte[] dataDir, byte[] taskId, byte[] configJson,
                ref IntPtr rt, ref IntPtr err);

            [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
            internal delegate int OracleCallback(IntPtr userData, IntPtr requestJson, UIntPtr requestLen, IntPtr reply);

            [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
            internal delegate void FreeCallback(IntPtr userData);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_new_with_oracle(byte[] dataDir, byte[] taskId, byte[] configJson,
                OracleCallback oracle, IntPtr userData, FreeCallback freeUserData, ref IntPtr rt, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_oracle_reply_set(IntPtr reply, byte[] answerJson, UIntPtr len);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_oracle_reply_set_error(IntPtr reply, byte[] message, UIntPtr len);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_validation_metrics_json(RuntimeHandle rt, ref IntPtr outJson, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_execute(RuntimeHandle rt, byte[] input, UIntPtr len,
                ref IntPtr result, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_execute_with_key(RuntimeHandle rt, byte[] input, UIntPtr len,
                byte[] key, ref IntPtr result, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_begin_rollout(RuntimeHandle rt, uint version, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_promote(RuntimeHandle rt, ref uint version, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_abort_rollout(RuntimeHandle rt, ref uint version, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_rollout_json(RuntimeHandle rt, ref IntPtr outJson, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_execute_batch(RuntimeHandle rt, byte[] inputs, UIntPtr len,
                ref IntPtr outJson, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_flush(RuntimeHandle rt, uint timeoutMs, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_shutdown(RuntimeHandle rt, uint timeoutMs, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern uint loopai_runtime_active_version(RuntimeHandle rt);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_explain(RuntimeHandle rt, byte[] input, UIntPtr len,
                uint topK, ref IntPtr outJson, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_health_json(RuntimeHandle rt, ref IntPtr outJson, ref IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern void loopai_runtime_free(IntPtr rt);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern IntPtr loopai_result_json(IntPtr result);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern IntPtr loopai_result_output_json(IntPtr result);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern double loopai_result_confidence(IntPtr result);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern uint loopai_result_version(IntPtr result);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern void loopai_result_free(IntPtr result);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern IntPtr loopai_error_message(IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern void loopai_error_free(IntPtr err);

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern void loopai_string_free(IntPtr s);
        }
    }
}
