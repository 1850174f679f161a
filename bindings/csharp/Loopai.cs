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
using System;
using System.Runtime.InteropServices;
using System.Text;

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
        /// <summary>The whole result as JSON (execution_id, output, confidence, scores, version, latency_ms, status, sampled, decided_by).</summary>
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

        /// <summary>The health as JSON: status ("ok" or "degraded"), task, active_version, dataset counters.</summary>
        public string HealthJson()
        {
            var text = IntPtr.Zero;
            var err = IntPtr.Zero;
            Check(Call(() => Native.loopai_runtime_health_json(handle, ref text, ref err)), err);
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

            [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
            internal static extern int loopai_runtime_execute(RuntimeHandle rt, byte[] input, UIntPtr len,
                ref IntPtr result, ref IntPtr err);

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
