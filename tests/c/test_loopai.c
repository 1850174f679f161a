/*
 * Tests of the C API (include/loopai.h) against libloopai, built by scripts/test-bindings.sh
 * with -Wall -Wextra -Werror -fsanitize=address,undefined.
 *
 * Environment:
 *   LOOPAI_TEST_DATA_DIR     a data dir where task "spam" has examples/spam/program.json
 *                            (installed with examples/spam/spec.json) active
 *   LOOPAI_VECTORS_DATA_DIR  a data dir where tests/vectors/program.json is active
 *   LOOPAI_VECTORS           tests/vectors/spam.jsonl
 *   LOOPAI_EXPLAIN_DATA_DIR  a data dir where tests/vectors/explain-program.json is active
 *   LOOPAI_EXPLAIN_VECTORS   tests/vectors/explain.jsonl
 *   LOOPAI_ROLLOUT_DATA_DIR  a data dir where examples/spam/program.json is installed as v1
 *                            (active), v2 and v3 (not activated)
 */
#define _GNU_SOURCE
#include <glob.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loopai.h"

static int passed, failed;
static const char *current;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,     \
                    current, #cond);                                                  \
            failed_here = 1;                                                          \
        }                                                                             \
    } while (0)

#define CHECK_STATUS(expr, want)                                                      \
    do {                                                                              \
        loopai_status_t got_ = (expr);                                                \
        if (got_ != (want)) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s returned %d (%s), want %d (%s)\n", __FILE__, \
                    __LINE__, current, #expr, got_, loopai_status_str(got_), (want),  \
                    loopai_status_str(want));                                         \
            failed_here = 1;                                                          \
        }                                                                             \
    } while (0)

#define TEST(name) static void name(int *failed_ptr)
#define BEGIN int failed_here = 0
#define END *failed_ptr = failed_here

static const char *spam_dir(void) {
    const char *d = getenv("LOOPAI_TEST_DATA_DIR");
    if (d == NULL) {
        fprintf(stderr, "LOOPAI_TEST_DATA_DIR is not set (run scripts/test-bindings.sh)\n");
        exit(2);
    }
    return d;
}

static loopai_runtime_t *open_spam(void) {
    loopai_runtime_t *rt = NULL;
    loopai_error_t *err = NULL;
    loopai_status_t st = loopai_runtime_new(spam_dir(), "spam", NULL, &rt, &err);
    if (st != LOOPAI_OK) {
        fprintf(stderr, "loopai_runtime_new: %s\n", loopai_error_message(err));
        loopai_error_free(err);
        exit(2);
    }
    return rt;
}

static loopai_status_t exec_str(const loopai_runtime_t *rt, const char *json,
                                loopai_result_t **out, loopai_error_t **err) {
    return loopai_runtime_execute(rt, (const uint8_t *)json, strlen(json), out, err);
}

TEST(version_and_status_names) {
    BEGIN;
    CHECK(strcmp(loopai_version(), "0.1.0") == 0 || strlen(loopai_version()) > 0);
    CHECK(strcmp(loopai_status_str(LOOPAI_OK), "ok") == 0);
    CHECK(strcmp(loopai_status_str(LOOPAI_E_INVALID_INPUT), "invalid_input") == 0);
    CHECK(strcmp(loopai_status_str(LOOPAI_E_CLOSED), "closed") == 0);
    CHECK(strcmp(loopai_status_str(LOOPAI_E_INTERNAL), "internal") == 0);
    CHECK(strcmp(loopai_status_str(12345), "unknown") == 0);
    CHECK(strcmp(loopai_status_str(INT32_MIN), "unknown") == 0);
    END;
}

TEST(lifecycle_execute_flush_health_free) {
    BEGIN;
    loopai_runtime_t *rt = open_spam();
    CHECK(loopai_runtime_active_version(rt) == 1);

    loopai_result_t *r = NULL;
    loopai_error_t *err = NULL;
    CHECK_STATUS(exec_str(rt, "{\"text\": \"WIN a FREE prize, call now\"}", &r, &err), LOOPAI_OK);
    CHECK(err == NULL);
    CHECK(r != NULL);
    if (r != NULL) {
        CHECK(strcmp(loopai_result_output_json(r), "\"spam\"") == 0);
        CHECK(loopai_result_confidence(r) == 0.95);
        CHECK(loopai_result_version(r) == 1);
        const char *json = loopai_result_json(r);
        CHECK(strstr(json, "\"output\":\"spam\"") != NULL);
        CHECK(strstr(json, "\"execution_id\":\"") != NULL);
        /* The same pointer is returned each time: strings belong to the result. */
        CHECK(loopai_result_json(r) == json);
    }

    char *batch = NULL;
    const char *inputs = "[{\"text\": \"see you at dinner\"}, {\"nope\": 1}]";
    CHECK_STATUS(loopai_runtime_execute_batch(rt, (const uint8_t *)inputs, strlen(inputs), &batch,
                                              &err),
                 LOOPAI_OK);
    if (batch != NULL) {
        CHECK(batch[0] == '[');
        CHECK(strstr(batch, "\"output\":\"ham\"") != NULL);
        CHECK(strstr(batch, "\"error\":{\"code\":-1,\"kind\":\"invalid_input\"") != NULL);
        loopai_string_free(batch);
    }

    CHECK_STATUS(loopai_runtime_flush(rt, 5000, &err), LOOPAI_OK);
    char *health = NULL;
    CHECK_STATUS(loopai_runtime_health_json(rt, &health, NULL), LOOPAI_OK);
    if (health != NULL) {
        CHECK(strstr(health, "\"status\":\"ok\"") != NULL);
        CHECK(strstr(health, "\"task\":\"spam\"") != NULL);
        loopai_string_free(health);
    }

    /* A result outlives its runtime. */
    loopai_runtime_free(rt);
    if (r != NULL) {
        CHECK(strcmp(loopai_result_output_json(r), "\"spam\"") == 0);
        loopai_result_free(r);
    }
    END;
}

/* Number of lines in the execution logs of task spam (datasets/spam/executions). */
static long logged_executions(void) {
    char pattern[4096];
    snprintf(pattern, sizeof pattern, "%s/datasets/spam/executions/*.jsonl", spam_dir());
    glob_t g;
    long lines = 0;
    if (glob(pattern, 0, NULL, &g) != 0)
        return 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        FILE *f = fopen(g.gl_pathv[i], "r");
        if (f == NULL)
            continue;
        int c;
        while ((c = fgetc(f)) != EOF)
            lines += c == '\n';
        fclose(f);
    }
    globfree(&g);
    return lines;
}

TEST(free_flushes_the_execution_log) {
    BEGIN;
    long before = logged_executions();
    loopai_runtime_t *rt = open_spam();
    for (int i = 0; i < 3; i++) {
        loopai_result_t *r = NULL;
        CHECK_STATUS(exec_str(rt, "{\"text\": \"logged\"}", &r, NULL), LOOPAI_OK);
        loopai_result_free(r);
    }
    loopai_runtime_free(rt); /* no explicit flush */
    CHECK(logged_executions() == before + 3);
    END;
}

TEST(shutdown_then_execute_is_closed) {
    BEGIN;
    loopai_runtime_t *rt = open_spam();
    loopai_error_t *err = NULL;
    CHECK_STATUS(loopai_runtime_shutdown(rt, 5000, &err), LOOPAI_OK);
    CHECK_STATUS(loopai_runtime_shutdown(rt, 5000, &err), LOOPAI_OK); /* harmless again */
    loopai_result_t *r = (loopai_result_t *)0x1; /* sentinel: must stay untouched */
    CHECK_STATUS(exec_str(rt, "{\"text\": \"hi\"}", &r, &err), LOOPAI_E_CLOSED);
    CHECK(r == (loopai_result_t *)0x1);
    CHECK(loopai_error_code(err) == LOOPAI_E_CLOSED);
    loopai_error_free(err);
    loopai_runtime_free(rt);
    END;
}

TEST(runtime_new_errors) {
    BEGIN;
    loopai_runtime_t *rt = (loopai_runtime_t *)0x1;
    loopai_error_t *err = NULL;

    CHECK_STATUS(loopai_runtime_new(NULL, "spam", NULL, &rt, &err), LOOPAI_E_CONFIG);
    CHECK(rt == (loopai_runtime_t *)0x1);
    CHECK(loopai_error_code(err) == LOOPAI_E_CONFIG);
    CHECK(strstr(loopai_error_message(err), "data_dir is NULL") != NULL);
    loopai_error_free(err);
    err = NULL;

    CHECK_STATUS(loopai_runtime_new(spam_dir(), NULL, NULL, &rt, NULL), LOOPAI_E_CONFIG);
    CHECK_STATUS(loopai_runtime_new(spam_dir(), "spam", NULL, NULL, NULL),
                 LOOPAI_E_INVALID_INPUT);

    CHECK_STATUS(loopai_runtime_new(spam_dir(), "no-such-task", NULL, &rt, &err),
                 LOOPAI_E_ARTIFACT);
    CHECK(strstr(loopai_error_message(err), "no active program") != NULL);
    loopai_error_free(err);
    err = NULL;

    CHECK_STATUS(loopai_runtime_new(spam_dir(), "sp\xff" "am", NULL, &rt, &err), LOOPAI_E_CONFIG);
    CHECK(strstr(loopai_error_message(err), "UTF-8") != NULL);
    loopai_error_free(err);
    err = NULL;

    CHECK_STATUS(loopai_runtime_new(spam_dir(), "spam", "{not json", &rt, &err), LOOPAI_E_CONFIG);
    CHECK(strstr(loopai_error_message(err), "config_json") != NULL);
    loopai_error_free(err);
    err = NULL;

    CHECK_STATUS(loopai_runtime_new(spam_dir(), "spam", "[1]", &rt, NULL), LOOPAI_E_CONFIG);
    CHECK_STATUS(
        loopai_runtime_new(spam_dir(), "spam", "{\"sampling\": {\"rate\": 1.5}}", &rt, &err),
        LOOPAI_E_CONFIG);
    CHECK(strstr(loopai_error_message(err), "sampling.rate") != NULL);
    loopai_error_free(err);
    CHECK(rt == (loopai_runtime_t *)0x1);

    /* A valid config object works. */
    loopai_runtime_t *ok = NULL;
    CHECK_STATUS(loopai_runtime_new(spam_dir(), "spam",
                                    "{\"storage\": {\"durability\": \"durable\"}}", &ok, NULL),
                 LOOPAI_OK);
    loopai_runtime_free(ok);
    loopai_runtime_free(NULL);
    END;
}

TEST(bad_input_is_an_error_never_a_crash) {
    BEGIN;
    loopai_runtime_t *rt = open_spam();
    loopai_result_t *r = (loopai_result_t *)0x1;
    loopai_error_t *err = NULL;

    static const char *bad[] = {
        "{\"text\": ",           /* truncated */
        "[1, 2]",                /* not an object */
        "{\"text\": 42}",        /* schema: not a string */
        "{\"other\": \"x\"}",    /* schema: missing text */
        "",                      /* empty */
        "{\"text\": \"\xc3\x28\"}", /* invalid UTF-8 inside a string */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(exec_str(rt, bad[i], &r, &err), LOOPAI_E_INVALID_INPUT);
        CHECK(r == (loopai_result_t *)0x1);
        CHECK(loopai_error_code(err) == LOOPAI_E_INVALID_INPUT);
        CHECK(strlen(loopai_error_message(err)) > 0);
        loopai_error_free(err);
        err = NULL;
    }
    /* The length is honoured: no NUL terminator needed, trailing bytes ignored. */
    const char *padded = "{\"text\": \"prize\"}GARBAGE";
    loopai_result_t *ok = NULL;
    CHECK_STATUS(loopai_runtime_execute(rt, (const uint8_t *)padded, strlen(padded) - 7, &ok, NULL),
                 LOOPAI_OK);
    loopai_result_free(ok);

    CHECK_STATUS(loopai_runtime_execute(rt, NULL, 0, &r, &err), LOOPAI_E_INVALID_INPUT);
    CHECK(strstr(loopai_error_message(err), "input_json is NULL") != NULL);
    loopai_error_free(err);
    CHECK_STATUS(loopai_runtime_execute(NULL, (const uint8_t *)"{}", 2, &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute(rt, (const uint8_t *)"{}", 2, NULL, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute(rt, (const uint8_t *)"{}", SIZE_MAX, &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK(r == (loopai_result_t *)0x1);

    char *batch = (char *)0x1;
    CHECK_STATUS(loopai_runtime_execute_batch(rt, (const uint8_t *)"{}", 2, &batch, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK(batch == (char *)0x1);

    CHECK_STATUS(loopai_runtime_flush(NULL, 10, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_shutdown(NULL, 10, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_health_json(rt, NULL, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK(loopai_runtime_active_version(NULL) == 0);

    /* Accessors and frees accept NULL. */
    CHECK(loopai_result_json(NULL) == NULL);
    CHECK(loopai_result_output_json(NULL) == NULL);
    CHECK(loopai_result_confidence(NULL) != loopai_result_confidence(NULL)); /* NaN */
    CHECK(loopai_result_version(NULL) == 0);
    CHECK(loopai_error_code(NULL) == LOOPAI_OK);
    CHECK(strcmp(loopai_error_message(NULL), "") == 0);
    loopai_result_free(NULL);
    loopai_error_free(NULL);
    loopai_string_free(NULL);
    loopai_runtime_free(rt);
    END;
}

/* ---- four threads on one runtime ---------------------------------------------------- */

#define THREADS 4
#define PER_THREAD 500

struct worker {
    const loopai_runtime_t *rt;
    int index;
    int failures;
};

static void *work(void *arg) {
    struct worker *w = arg;
    static const char *inputs[] = {"{\"text\": \"WIN a FREE prize, call now\"}",
                                   "{\"text\": \"Are you coming home for dinner?\"}"};
    static const char *outputs[] = {"\"spam\"", "\"ham\""};
    for (int i = 0; i < PER_THREAD; i++) {
        int k = (i + w->index) % 2;
        loopai_result_t *r = NULL;
        loopai_error_t *err = NULL;
        if (exec_str(w->rt, inputs[k], &r, &err) != LOOPAI_OK) {
            w->failures++;
            loopai_error_free(err);
            continue;
        }
        if (strcmp(loopai_result_output_json(r), outputs[k]) != 0 || loopai_result_version(r) != 1)
            w->failures++;
        loopai_result_free(r);
    }
    return NULL;
}

TEST(four_threads_execute_concurrently) {
    BEGIN;
    loopai_runtime_t *rt = open_spam();
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (struct worker){.rt = rt, .index = i, .failures = 0};
        CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        CHECK(workers[i].failures == 0);
    }
    CHECK_STATUS(loopai_runtime_flush(rt, 10000, NULL), LOOPAI_OK);
    char *health = NULL;
    CHECK_STATUS(loopai_runtime_health_json(rt, &health, NULL), LOOPAI_OK);
    if (health != NULL) {
        char want[64];
        snprintf(want, sizeof want, "\"written\":%d", THREADS * PER_THREAD);
        CHECK(strstr(health, want) != NULL);
        if (strstr(health, want) == NULL)
            fprintf(stderr, "health: %s\n", health);
        loopai_string_free(health);
    }
    loopai_runtime_free(rt);
    END;
}

TEST(runtime_from_before_fork_is_closed_in_the_child) {
    BEGIN;
    loopai_runtime_t *rt = open_spam();
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        loopai_result_t *r = NULL;
        int code = exec_str(rt, "{\"text\": \"x\"}", &r, NULL) == LOOPAI_E_CLOSED ? 0 : 1;
        _exit(code);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    loopai_result_t *r = NULL;
    CHECK_STATUS(exec_str(rt, "{\"text\": \"parent\"}", &r, NULL), LOOPAI_OK);
    loopai_result_free(r);
    loopai_runtime_free(rt);
    END;
}

/* ---- adversarial arguments and inputs -------------------------------------------------- */

TEST(every_pointer_argument_may_be_null) {
    BEGIN;
    loopai_runtime_t *rt = open_spam();
    const uint8_t *in = (const uint8_t *)"{\"text\": \"hi\"}";
    size_t n = strlen((const char *)in);
    loopai_result_t *r = (loopai_result_t *)0x1;
    char *json = (char *)0x1;
    uint32_t version = 77;

    CHECK_STATUS(loopai_runtime_execute_with_key(NULL, in, n, "k", &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, NULL, n, "k", &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, in, n, NULL, &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, in, n, "k", NULL, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, in, n, "k\xff", &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK(r == (loopai_result_t *)0x1);

    CHECK_STATUS(loopai_runtime_execute_batch(NULL, (const uint8_t *)"[]", 2, &json, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_batch(rt, NULL, 2, &json, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_batch(rt, (const uint8_t *)"[]", 2, NULL, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK(json == (char *)0x1);

    CHECK_STATUS(loopai_runtime_health_json(NULL, &json, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_validation_metrics_json(NULL, &json, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_validation_metrics_json(rt, NULL, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_rollout_json(NULL, &json, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_rollout_json(rt, NULL, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK(json == (char *)0x1);

    CHECK_STATUS(loopai_runtime_begin_rollout(NULL, 2, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_promote(NULL, &version, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_abort_rollout(NULL, &version, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK(version == 77);
    /* Optional outputs may be NULL. */
    CHECK_STATUS(loopai_runtime_abort_rollout(rt, NULL, NULL), LOOPAI_OK);

    CHECK(loopai_oracle_reply_set(NULL, "{}", 2) == LOOPAI_E_INVALID_INPUT);
    CHECK(loopai_oracle_reply_set_error(NULL, "x", 1) == LOOPAI_E_INVALID_INPUT);
    CHECK(loopai_runtime_new_with_oracle(spam_dir(), "spam", NULL, NULL, NULL, NULL, NULL,
                                         NULL) == LOOPAI_E_CONFIG);
    loopai_runtime_free(NULL);
    loopai_runtime_free(rt);
    END;
}

TEST(hostile_inputs_are_refused_with_a_message) {
    BEGIN;
    loopai_runtime_t *rt = open_spam();
    loopai_result_t *r = (loopai_result_t *)0x1;
    loopai_error_t *err = NULL;

    /* Embedded NUL before the end of the buffer: the length counts, not the NUL. */
    static const char nul[] = "{\"text\": \"a\0b\"}";
    CHECK_STATUS(loopai_runtime_execute(rt, (const uint8_t *)nul, sizeof nul - 1, &r, &err),
                 LOOPAI_E_INVALID_INPUT);
    loopai_error_free(err);
    err = NULL;
    /* An escaped NUL is a valid JSON string character. */
    loopai_result_t *ok = NULL;
    CHECK_STATUS(exec_str(rt, "{\"text\": \"a\\u0000b\"}", &ok, NULL), LOOPAI_OK);
    loopai_result_free(ok);

    /* Nesting far deeper than the parser's recursion limit: an error, not a stack
     * overflow. */
    size_t depth = 1 << 20;
    char *deep = malloc(2 * depth + 32);
    CHECK(deep != NULL);
    if (deep != NULL) {
        size_t k = (size_t)sprintf(deep, "{\"text\": \"x\", \"a\": ");
        memset(deep + k, '[', depth);
        memset(deep + k + depth, ']', depth);
        strcpy(deep + k + 2 * depth, "}");
        CHECK_STATUS(exec_str(rt, deep, &r, &err), LOOPAI_E_INVALID_INPUT);
        CHECK(err != NULL && strstr(loopai_error_message(err), "recursion limit") != NULL);
        loopai_error_free(err);
        err = NULL;
        char *out = (char *)0x1;
        deep[0] = '[';
        CHECK_STATUS(loopai_runtime_execute_batch(rt, (const uint8_t *)deep, strlen(deep), &out,
                                                  NULL),
                     LOOPAI_E_INVALID_INPUT);
        CHECK(out == (char *)0x1);
        free(deep);
    }

    /* One byte over the 16 MiB document limit. */
    size_t big = (16u << 20) + 1;
    char *huge = malloc(big);
    CHECK(huge != NULL);
    if (huge != NULL) {
        memset(huge, ' ', big);
        memcpy(huge, "{\"text\": \"x\"}", 13);
        CHECK_STATUS(loopai_runtime_execute(rt, (const uint8_t *)huge, big, &r, &err),
                     LOOPAI_E_INVALID_INPUT);
        CHECK(err != NULL && strstr(loopai_error_message(err), "over the limit") != NULL);
        loopai_error_free(err);
        err = NULL;
        /* Exactly at the limit the document is parsed (the padding is whitespace). */
        CHECK_STATUS(loopai_runtime_execute(rt, (const uint8_t *)huge, big - 1, &ok, NULL),
                     LOOPAI_OK);
        loopai_result_free(ok);
        free(huge);
    }

    /* Numbers out of f64 range; a text over execution.max_input_bytes (64 KiB). */
    CHECK_STATUS(exec_str(rt, "{\"text\": \"x\", \"n\": 1e400}", &r, &err),
                 LOOPAI_E_INVALID_INPUT);
    loopai_error_free(err);
    err = NULL;
    size_t long_len = (64u << 10) + 1;
    char *long_text = malloc(long_len + 16);
    CHECK(long_text != NULL);
    if (long_text != NULL) {
        strcpy(long_text, "{\"text\": \"");
        memset(long_text + 10, 'a', long_len);
        strcpy(long_text + 10 + long_len, "\"}");
        /* The example program asks for "on_oversize": "truncate". */
        CHECK_STATUS(exec_str(rt, long_text, &ok, NULL), LOOPAI_OK);
        loopai_result_free(ok);
        free(long_text);
    }
    CHECK(r == (loopai_result_t *)0x1);

    /* A batch mixing good, bad and non-object elements answers each in order. */
    const char *mixed = "[{\"text\": \"WIN a FREE prize, call now\"}, 7, {\"text\": 1}, null, "
                        "{\"text\": \"\\ud800\"}, {\"text\": \"dinner?\"}]";
    char *out = NULL;
    CHECK_STATUS(loopai_runtime_execute_batch(rt, (const uint8_t *)mixed, strlen(mixed), &out,
                                              &err),
                 LOOPAI_E_INVALID_INPUT);
    loopai_error_free(err); /* "\ud800" is a lone surrogate: the whole document is refused */
    err = NULL;
    mixed = "[{\"text\": \"WIN a FREE prize, call now\"}, 7, {\"text\": 1}, null, "
            "{\"text\": \"dinner?\"}]";
    CHECK_STATUS(loopai_runtime_execute_batch(rt, (const uint8_t *)mixed, strlen(mixed), &out,
                                              NULL),
                 LOOPAI_OK);
    if (out != NULL) {
        const char *p = out;
        int errors = 0;
        while ((p = strstr(p, "\"error\":{\"code\":-1")) != NULL) {
            errors++;
            p++;
        }
        CHECK(errors == 3);
        CHECK(strstr(out, "\"output\":\"spam\"") < strstr(out, "\"error\""));
        loopai_string_free(out);
    }
    loopai_runtime_free(rt);
    END;
}

/* ---- executions racing a shutdown ------------------------------------------------------ */

struct racer {
    const loopai_runtime_t *rt;
    int unexpected;
    int closed;
};

static void *race_work(void *arg) {
    struct racer *w = arg;
    for (int i = 0; i < 2000 && w->closed < 50; i++) {
        loopai_result_t *r = NULL;
        loopai_error_t *err = NULL;
        loopai_status_t st = exec_str(w->rt, "{\"text\": \"WIN a FREE prize, call now\"}", &r, &err);
        if (st == LOOPAI_OK) {
            if (strcmp(loopai_result_output_json(r), "\"spam\"") != 0)
                w->unexpected++;
            loopai_result_free(r);
        } else if (st == LOOPAI_E_CLOSED && loopai_error_code(err) == LOOPAI_E_CLOSED) {
            w->closed++;
        } else {
            w->unexpected++;
        }
        loopai_error_free(err);
    }
    return NULL;
}

TEST(executions_racing_a_shutdown_succeed_or_are_closed) {
    BEGIN;
    loopai_runtime_t *rt = open_spam();
    pthread_t threads[THREADS];
    struct racer racers[THREADS];
    for (int i = 0; i < THREADS; i++) {
        racers[i] = (struct racer){.rt = rt, .unexpected = 0, .closed = 0};
        CHECK(pthread_create(&threads[i], NULL, race_work, &racers[i]) == 0);
    }
    loopai_status_t st = loopai_runtime_shutdown(rt, 10000, NULL);
    CHECK(st == LOOPAI_OK);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        CHECK(racers[i].unexpected == 0);
    }
    /* After shutdown every execution is closed; the metrics are still readable. */
    loopai_result_t *r = NULL;
    CHECK_STATUS(exec_str(rt, "{\"text\": \"late\"}", &r, NULL), LOOPAI_E_CLOSED);
    char *metrics = NULL;
    CHECK_STATUS(loopai_runtime_validation_metrics_json(rt, &metrics, NULL), LOOPAI_OK);
    loopai_string_free(metrics);
    loopai_runtime_free(rt);
    END;
}

/* ---- parity vectors ------------------------------------------------------------------- */

/* Returns a pointer just past the JSON value starting at p (minimal scanner for the
 * compact, generated vector lines), or NULL. */
static const char *skip_value(const char *p) {
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++)
            if (*p == '\\' && p[1])
                p++;
        return *p == '"' ? p + 1 : NULL;
    }
    if (*p == '{' || *p == '[') {
        int depth = 0;
        for (; *p; p++) {
            if (*p == '"') {
                p = skip_value(p);
                if (p == NULL)
                    return NULL;
                p--;
            } else if (*p == '{' || *p == '[') {
                depth++;
            } else if (*p == '}' || *p == ']') {
                if (--depth == 0)
                    return p + 1;
            }
        }
        return NULL;
    }
    while (*p && *p != ',' && *p != '}' && *p != ']')
        p++;
    return p;
}

/* Finds top-level key `key` of the object `obj`; sets [*start, *end) to its value. */
static int find_key(const char *obj, const char *key, const char **start, const char **end) {
    const char *p = obj;
    if (*p++ != '{')
        return 0;
    size_t klen = strlen(key);
    while (*p == '"') {
        const char *kend = skip_value(p);
        if (kend == NULL || *kend != ':')
            return 0;
        const char *v = kend + 1;
        const char *vend = skip_value(v);
        if (vend == NULL)
            return 0;
        if ((size_t)(kend - p) == klen + 2 && strncmp(p + 1, key, klen) == 0) {
            *start = v;
            *end = vend;
            return 1;
        }
        p = vend;
        if (*p == ',')
            p++;
    }
    return 0;
}

static int span_eq(const char *s, const char *e, const char *text) {
    return strlen(text) == (size_t)(e - s) && strncmp(s, text, (size_t)(e - s)) == 0;
}

TEST(parity_vectors_bit_for_bit) {
    BEGIN;
    const char *dir = getenv("LOOPAI_VECTORS_DATA_DIR");
    const char *path = getenv("LOOPAI_VECTORS");
    CHECK(dir != NULL && path != NULL);
    if (dir == NULL || path == NULL) {
        END;
        return;
    }
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    if (f == NULL) {
        END;
        return;
    }
    loopai_runtime_t *rt = NULL;
    loopai_error_t *err = NULL;
    CHECK_STATUS(loopai_runtime_new(dir, "spam", NULL, &rt, &err), LOOPAI_OK);
    if (rt == NULL) {
        fprintf(stderr, "%s\n", loopai_error_message(err));
        loopai_error_free(err);
        fclose(f);
        END;
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int count = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        const char *is, *ie, *os, *oe, *bs, *be, *ss, *se, *rs, *re;
        int ok = find_key(line, "input", &is, &ie) && find_key(line, "output", &os, &oe) &&
                 find_key(line, "confidence_bits", &bs, &be) && find_key(line, "scores", &ss, &se);
        CHECK(ok);
        if (!ok)
            continue;
        loopai_result_t *r = NULL;
        CHECK_STATUS(loopai_runtime_execute(rt, (const uint8_t *)is, (size_t)(ie - is), &r, NULL),
                     LOOPAI_OK);
        if (r == NULL)
            continue;
        /* output: same JSON text. */
        CHECK(span_eq(os, oe, loopai_result_output_json(r)));
        /* confidence: same bits. */
        double c = loopai_result_confidence(r);
        uint64_t bits;
        memcpy(&bits, &c, sizeof bits);
        uint64_t want = strtoull(bs + 1, NULL, 16);
        CHECK(bits == want);
        /* scores: same shortest round-trip text, hence the same bits. */
        const char *json = loopai_result_json(r);
        CHECK(find_key(json, "scores", &rs, &re) && (re - rs) == (se - ss) &&
              strncmp(rs, ss, (size_t)(se - ss)) == 0);
        if (bits != want || !span_eq(os, oe, loopai_result_output_json(r)))
            fprintf(stderr, "vector %d mismatch: got %s\n", count, json);
        loopai_result_free(r);
        count++;
    }
    free(line);
    fclose(f);
    CHECK(count >= 10);
    loopai_runtime_free(rt);
    END;
}

/* ---- oracle callbacks ------------------------------------------------------------------ */

/* Returns the unsigned integer value of top-level key `key` of a compact JSON object, or -1
 * when it is missing or not a number. */
static long long json_int(const char *obj, const char *key) {
    const char *s, *e;
    if (!find_key(obj, key, &s, &e) || s == e || *s < '0' || *s > '9')
        return -1;
    return strtoll(s, NULL, 10);
}

enum oracle_mode {
    ORACLE_KEYWORD,   /* "spam" when the input mentions a prize, else "ham" */
    ORACLE_FAIL,      /* returns 1 with an error message */
    ORACLE_SILENT,    /* returns 0 without a reply */
    ORACLE_BAD_LABEL, /* answers a label the task does not have */
    ORACLE_BAD_UTF8,  /* the reply is not UTF-8: the setter refuses it */
};

struct oracle_state {
    enum oracle_mode mode;
    atomic_long calls;
    atomic_long bad_requests;   /* requests not as documented */
    atomic_long setter_refused; /* loopai_oracle_reply_set returned an error */
    atomic_int freed;           /* free_user_data calls */
};

static void oracle_state_init(struct oracle_state *st, enum oracle_mode mode) {
    st->mode = mode;
    atomic_init(&st->calls, 0);
    atomic_init(&st->bad_requests, 0);
    atomic_init(&st->setter_refused, 0);
    atomic_init(&st->freed, 0);
}

static int32_t test_oracle(void *user_data, const char *request_json, size_t request_len,
                           loopai_oracle_reply_t *reply) {
    struct oracle_state *st = user_data;
    atomic_fetch_add(&st->calls, 1);
    const char *ts, *te;
    if (strlen(request_json) != request_len ||
        strstr(request_json, "\"task\":\"spam\"") == NULL ||
        strstr(request_json, "\"labels\":[\"spam\",\"ham\"]") == NULL ||
        !find_key(request_json, "input", &ts, &te) || json_int(request_json, "timeout_ms") <= 0)
        atomic_fetch_add(&st->bad_requests, 1);
    const char *answer = NULL;
    switch (st->mode) {
    case ORACLE_KEYWORD:
        answer = strstr(request_json, "prize") != NULL ? "{\"output\": \"spam\", \"cost\": 1.5}"
                                                       : "{\"output\": \"ham\"}";
        break;
    case ORACLE_FAIL:
        loopai_oracle_reply_set_error(reply, "model offline", strlen("model offline"));
        return 1;
    case ORACLE_SILENT:
        return 0;
    case ORACLE_BAD_LABEL:
        answer = "{\"output\": \"maybe spam\"}";
        break;
    case ORACLE_BAD_UTF8:
        answer = "{\"output\": \"sp\xff\"}";
        break;
    }
    if (loopai_oracle_reply_set(reply, answer, strlen(answer)) != LOOPAI_OK)
        atomic_fetch_add(&st->setter_refused, 1);
    return 0;
}

static void free_oracle_state(void *user_data) {
    struct oracle_state *st = user_data;
    atomic_fetch_add(&st->freed, 1);
}

static loopai_runtime_t *open_with_oracle(const char *config, struct oracle_state *st) {
    loopai_runtime_t *rt = NULL;
    loopai_error_t *err = NULL;
    loopai_status_t status = loopai_runtime_new_with_oracle(spam_dir(), "spam", config, test_oracle,
                                                            st, free_oracle_state, &rt, &err);
    if (status != LOOPAI_OK) {
        fprintf(stderr, "loopai_runtime_new_with_oracle: %s\n", loopai_error_message(err));
        loopai_error_free(err);
        exit(2);
    }
    return rt;
}

/* The validation metrics after a flush; the caller frees them with loopai_string_free. */
static char *flushed_metrics(const loopai_runtime_t *rt, int *failed_ptr) {
    int failed_here = 0;
    loopai_error_t *err = NULL;
    CHECK_STATUS(loopai_runtime_flush(rt, 30000, &err), LOOPAI_OK);
    if (err != NULL) {
        fprintf(stderr, "flush: %s\n", loopai_error_message(err));
        loopai_error_free(err);
    }
    char *metrics = NULL;
    CHECK_STATUS(loopai_runtime_validation_metrics_json(rt, &metrics, NULL), LOOPAI_OK);
    CHECK(metrics != NULL);
    if (failed_here)
        *failed_ptr = 1;
    return metrics;
}

/* Sampling every execution (rate 1, seeded), the C callback validates each one. */
TEST(oracle_callback_validates_sampled_executions) {
    BEGIN;
    struct oracle_state st;
    oracle_state_init(&st, ORACLE_KEYWORD);
    loopai_runtime_t *rt =
        open_with_oracle("{\"sampling\": {\"strategy\": \"random\", \"rate\": 1, \"seed\": 7}}", &st);
    /* Program and oracle agree on the first two and disagree on the third (the program
     * says spam, with low confidence; the oracle says ham). */
    static const char *inputs[] = {"{\"text\": \"WIN a FREE prize, call now\"}",
                                   "{\"text\": \"Are you coming home for dinner?\"}",
                                   "{\"text\": \"ALL CAPS MESSAGE WITH NO SPAM WORDS\"}"};
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < 3; i++) {
            loopai_result_t *r = NULL;
            CHECK_STATUS(exec_str(rt, inputs[i], &r, NULL), LOOPAI_OK);
            if (r != NULL)
                CHECK(strstr(loopai_result_json(r), "\"sampled\":true") != NULL);
            loopai_result_free(r);
        }
    }
    char *m = flushed_metrics(rt, &failed_here);
    if (m != NULL) {
        const char *s, *e;
        CHECK(find_key(m, "oracle", &s, &e) && span_eq(s, e, "\"in-process\""));
        CHECK(json_int(m, "validated") == 6);
        CHECK(json_int(m, "matched") == 4);
        CHECK(json_int(m, "oracle_errors") == 0);
        CHECK(json_int(m, "skipped_no_oracle") == 0);
        CHECK(json_int(m, "skipped_queue_full") == 0);
        CHECK(find_key(m, "versions", &s, &e) && strstr(s, "\"version\":1") != NULL);
        if (failed_here)
            fprintf(stderr, "metrics: %s\n", m);
        loopai_string_free(m);
    }
    CHECK(atomic_load(&st.calls) == 6);
    CHECK(atomic_load(&st.bad_requests) == 0);
    CHECK(atomic_load(&st.setter_refused) == 0);

    /* The health document carries the same metrics, and telemetry (off here). */
    char *health = NULL;
    CHECK_STATUS(loopai_runtime_health_json(rt, &health, NULL), LOOPAI_OK);
    if (health != NULL) {
        const char *s, *e;
        CHECK(find_key(health, "validation", &s, &e) && json_int(s, "validated") == 6);
        CHECK(find_key(health, "telemetry", &s, &e) && span_eq(s, e, "null"));
        loopai_string_free(health);
    }
    CHECK(atomic_load(&st.freed) == 0);
    loopai_runtime_free(rt);
    CHECK(atomic_load(&st.freed) == 1);
    END;
}

/* Failing, silent and invalid callbacks are oracle errors: counted, never execute errors. */
TEST(failing_oracle_callbacks_are_counted) {
    BEGIN;
    static const enum oracle_mode modes[] = {ORACLE_FAIL, ORACLE_SILENT, ORACLE_BAD_LABEL,
                                             ORACLE_BAD_UTF8};
    for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++) {
        struct oracle_state st;
        oracle_state_init(&st, modes[k]);
        loopai_runtime_t *rt = open_with_oracle("{\"sampling\": {\"rate\": 1, \"seed\": 1}}", &st);
        for (int i = 0; i < 3; i++) {
            loopai_result_t *r = NULL;
            CHECK_STATUS(exec_str(rt, "{\"text\": \"WIN a FREE prize, call now\"}", &r, NULL),
                         LOOPAI_OK);
            loopai_result_free(r);
        }
        char *m = flushed_metrics(rt, &failed_here);
        if (m != NULL) {
            CHECK(json_int(m, "oracle_errors") == 3);
            CHECK(json_int(m, "validated") == 0);
            if (json_int(m, "oracle_errors") != 3)
                fprintf(stderr, "mode %d: metrics: %s\n", (int)modes[k], m);
            loopai_string_free(m);
        }
        CHECK(atomic_load(&st.calls) == 3);
        CHECK(atomic_load(&st.setter_refused) == (modes[k] == ORACLE_BAD_UTF8 ? 3 : 0));
        loopai_runtime_free(rt);
        CHECK(atomic_load(&st.freed) == 1);
    }
    END;
}

#define CASCADE_THREADS 4
#define CASCADE_PER_THREAD 25

static const char *const ABSTAINING = "{\"text\": \"ALL CAPS MESSAGE WITH NO SPAM WORDS\"}";

static void *cascade_work(void *arg) {
    struct worker *w = arg;
    for (int i = 0; i < CASCADE_PER_THREAD; i++) {
        loopai_result_t *r = NULL;
        if (exec_str(w->rt, ABSTAINING, &r, NULL) != LOOPAI_OK) {
            w->failures++;
            continue;
        }
        const char *json = loopai_result_json(r);
        if (strcmp(loopai_result_output_json(r), "\"ham\"") != 0 ||
            strstr(json, "\"source\":\"oracle\"") == NULL)
            w->failures++;
        loopai_result_free(r);
    }
    return NULL;
}

/* execution.fallback: oracle answers abstentions through the callback, from the executing
 * threads (concurrently); a failing callback leaves the program's abstention. */
TEST(oracle_callback_answers_abstentions_in_the_cascade) {
    BEGIN;
    const char *config =
        "{\"execution\": {\"fallback\": \"oracle\", \"timeout_ms\": 30000}, \"sampling\": {\"rate\": 0}}";
    struct oracle_state st;
    oracle_state_init(&st, ORACLE_KEYWORD);
    loopai_runtime_t *rt = open_with_oracle(config, &st);

    loopai_result_t *r = NULL;
    CHECK_STATUS(exec_str(rt, ABSTAINING, &r, NULL), LOOPAI_OK);
    if (r != NULL) {
        const char *json = loopai_result_json(r);
        CHECK(strcmp(loopai_result_output_json(r), "\"ham\"") == 0);
        CHECK(strstr(json, "\"status\":\"success\"") != NULL);
        CHECK(strstr(json, "\"source\":\"oracle\"") != NULL);
        CHECK(loopai_result_confidence(r) < 0.6); /* the program's confidence */
        loopai_result_free(r);
    }
    /* A confident answer does not ask the oracle. */
    CHECK_STATUS(exec_str(rt, "{\"text\": \"WIN a FREE prize, call now\"}", &r, NULL), LOOPAI_OK);
    if (r != NULL) {
        CHECK(strstr(loopai_result_json(r), "\"source\":\"program\"") != NULL);
        loopai_result_free(r);
    }
    CHECK(atomic_load(&st.calls) == 1);

    pthread_t threads[CASCADE_THREADS];
    struct worker workers[CASCADE_THREADS];
    for (int i = 0; i < CASCADE_THREADS; i++) {
        workers[i] = (struct worker){.rt = rt, .index = i, .failures = 0};
        CHECK(pthread_create(&threads[i], NULL, cascade_work, &workers[i]) == 0);
    }
    for (int i = 0; i < CASCADE_THREADS; i++) {
        pthread_join(threads[i], NULL);
        CHECK(workers[i].failures == 0);
    }
    long total = 1 + CASCADE_THREADS * CASCADE_PER_THREAD;
    CHECK(atomic_load(&st.calls) == total);
    char *m = flushed_metrics(rt, &failed_here);
    if (m != NULL) {
        const char *s, *e;
        CHECK(find_key(m, "fallback", &s, &e) && span_eq(s, e, "true"));
        CHECK(json_int(m, "oracle_fallbacks") == total);
        CHECK(json_int(m, "oracle_fallback_failures") == 0);
        CHECK(json_int(m, "validated") == 0); /* cascade answers are not validations */
        loopai_string_free(m);
    }
    CHECK(atomic_load(&st.bad_requests) == 0);
    loopai_runtime_free(rt);
    CHECK(atomic_load(&st.freed) == 1);

    /* A failing oracle: the program's answer, with status abstain. */
    struct oracle_state down;
    oracle_state_init(&down, ORACLE_FAIL);
    rt = open_with_oracle(config, &down);
    r = NULL;
    CHECK_STATUS(exec_str(rt, ABSTAINING, &r, NULL), LOOPAI_OK);
    if (r != NULL) {
        const char *json = loopai_result_json(r);
        CHECK(strcmp(loopai_result_output_json(r), "\"spam\"") == 0);
        CHECK(strstr(json, "\"status\":\"abstain\"") != NULL);
        CHECK(strstr(json, "\"source\":\"program\"") != NULL);
        loopai_result_free(r);
    }
    m = flushed_metrics(rt, &failed_here);
    if (m != NULL) {
        CHECK(json_int(m, "oracle_fallbacks") == 0);
        CHECK(json_int(m, "oracle_fallback_failures") == 1);
        loopai_string_free(m);
    }
    CHECK(atomic_load(&down.calls) == 1);
    loopai_runtime_free(rt);
    CHECK(atomic_load(&down.freed) == 1);
    END;
}

/* A NULL callback is refused; user_data is released exactly once on every failure. */
TEST(runtime_new_with_oracle_errors_release_user_data) {
    BEGIN;
    struct oracle_state st;
    oracle_state_init(&st, ORACLE_KEYWORD);
    loopai_runtime_t *rt = (loopai_runtime_t *)0x1;
    loopai_error_t *err = NULL;
    CHECK_STATUS(loopai_runtime_new_with_oracle(spam_dir(), "spam", NULL, NULL, &st,
                                                free_oracle_state, &rt, &err),
                 LOOPAI_E_CONFIG);
    CHECK(rt == (loopai_runtime_t *)0x1);
    CHECK(loopai_error_code(err) == LOOPAI_E_CONFIG);
    CHECK(strstr(loopai_error_message(err), "oracle is NULL") != NULL);
    loopai_error_free(err);
    err = NULL;
    CHECK(atomic_load(&st.freed) == 1);

    CHECK_STATUS(loopai_runtime_new_with_oracle(spam_dir(), "no-such-task", NULL, test_oracle, &st,
                                                free_oracle_state, &rt, &err),
                 LOOPAI_E_ARTIFACT);
    loopai_error_free(err);
    CHECK(atomic_load(&st.freed) == 2);
    CHECK_STATUS(loopai_runtime_new_with_oracle(spam_dir(), "spam", "{\"sampling\": 3}",
                                                test_oracle, &st, free_oracle_state, &rt, NULL),
                 LOOPAI_E_CONFIG);
    CHECK(atomic_load(&st.freed) == 3);
    CHECK_STATUS(loopai_runtime_new_with_oracle(spam_dir(), "spam", NULL, test_oracle, &st,
                                                free_oracle_state, NULL, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK(atomic_load(&st.freed) == 4);
    CHECK(rt == (loopai_runtime_t *)0x1);
    CHECK(atomic_load(&st.calls) == 0);

    /* free_user_data may be NULL. */
    loopai_runtime_t *ok = NULL;
    CHECK_STATUS(loopai_runtime_new_with_oracle(spam_dir(), "spam", NULL, test_oracle, &st, NULL,
                                                &ok, NULL),
                 LOOPAI_OK);
    loopai_runtime_free(ok);
    CHECK(atomic_load(&st.freed) == 4);

    /* Without a callback-oracle, an oracle section or telemetry, nothing would validate a
     * sample: nothing is sampled, whatever the rate. */
    loopai_runtime_t *plain = NULL;
    CHECK_STATUS(loopai_runtime_new(spam_dir(), "spam", "{\"sampling\": {\"rate\": 1}}", &plain, NULL),
                 LOOPAI_OK);
    loopai_result_t *r = NULL;
    CHECK_STATUS(exec_str(plain, "{\"text\": \"hello\"}", &r, NULL), LOOPAI_OK);
    CHECK(r != NULL && strstr(loopai_result_json(r), "\"sampled\":false") != NULL);
    loopai_result_free(r);
    char *m = flushed_metrics(plain, &failed_here);
    if (m != NULL) {
        const char *s, *e;
        CHECK(find_key(m, "oracle", &s, &e) && span_eq(s, e, "null"));
        CHECK(json_int(m, "skipped_no_oracle") == 0);
        loopai_string_free(m);
    }
    CHECK_STATUS(loopai_runtime_validation_metrics_json(NULL, &m, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_validation_metrics_json(plain, NULL, NULL), LOOPAI_E_INVALID_INPUT);
    loopai_runtime_free(plain);

    /* The setters refuse NULL. */
    CHECK(loopai_oracle_reply_set(NULL, "{}", 2) == LOOPAI_E_INVALID_INPUT);
    CHECK(loopai_oracle_reply_set_error(NULL, "x", 1) == LOOPAI_E_INVALID_INPUT);
    END;
}

/* ---- canary rollout ------------------------------------------------------------------- */

/* The rollout JSON of `rt` (free it with loopai_string_free), or NULL after a failed check. */
static char *rollout_json(const loopai_runtime_t *rt, int *failed_ptr) {
    int failed_here = 0;
    char *json = NULL;
    CHECK_STATUS(loopai_runtime_rollout_json(rt, &json, NULL), LOOPAI_OK);
    CHECK(json != NULL);
    if (failed_here)
        *failed_ptr = 1;
    return json;
}

/* Whether top-level key `key` of `obj` is exactly the JSON text `value`. */
static int json_is(const char *obj, const char *key, const char *value) {
    const char *s, *e;
    return obj != NULL && find_key(obj, key, &s, &e) && span_eq(s, e, value);
}

/* The version that served `input` with routing key `key`, or 0 after an error. */
static uint32_t served_by(const loopai_runtime_t *rt, const char *input, const char *key) {
    loopai_result_t *r = NULL;
    loopai_error_t *err = NULL;
    if (loopai_runtime_execute_with_key(rt, (const uint8_t *)input, strlen(input), key, &r, &err) !=
        LOOPAI_OK) {
        fprintf(stderr, "loopai_runtime_execute_with_key: %s\n", loopai_error_message(err));
        loopai_error_free(err);
        return 0;
    }
    uint32_t v = loopai_result_version(r);
    loopai_result_free(r);
    return v;
}

/* LOOPAI_ROLLOUT_DATA_DIR has v1 active and v2, v3 installed (scripts/test-bindings.sh);
 * this test is its only user and leaves v2 active, v3 rolled back. */
TEST(rollout_routes_by_key_promotes_and_rolls_back) {
    BEGIN;
    const char *dir = getenv("LOOPAI_ROLLOUT_DATA_DIR");
    CHECK(dir != NULL);
    if (dir == NULL) {
        END;
        return;
    }
    loopai_runtime_t *rt = NULL;
    loopai_error_t *err = NULL;
    CHECK_STATUS(loopai_runtime_new(dir, "spam", "{\"rollout\": {\"stages\": [0.5, 1.0]}}", &rt,
                                    &err),
                 LOOPAI_OK);
    if (rt == NULL) {
        fprintf(stderr, "%s\n", loopai_error_message(err));
        loopai_error_free(err);
        END;
        return;
    }

    /* No rollout yet: the JSON null, nothing to abort, nothing to promote. */
    char *json = rollout_json(rt, &failed_here);
    CHECK(json != NULL && strcmp(json, "null") == 0);
    loopai_string_free(json);
    uint32_t version = 77;
    CHECK_STATUS(loopai_runtime_abort_rollout(rt, &version, NULL), LOOPAI_OK);
    CHECK(version == 0);
    version = 77;
    CHECK_STATUS(loopai_runtime_promote(rt, &version, &err), LOOPAI_E_ARTIFACT);
    CHECK(version == 77);
    CHECK(loopai_error_code(err) == LOOPAI_E_ARTIFACT);
    CHECK(strstr(loopai_error_message(err), "no rollout in progress") != NULL);
    loopai_error_free(err);
    err = NULL;
    /* Not installed; the active version. */
    CHECK_STATUS(loopai_runtime_begin_rollout(rt, 9, &err), LOOPAI_E_ARTIFACT);
    CHECK(loopai_error_code(err) == LOOPAI_E_ARTIFACT);
    loopai_error_free(err);
    err = NULL;
    CHECK_STATUS(loopai_runtime_begin_rollout(rt, 1, NULL), LOOPAI_E_ARTIFACT);

    /* Roll out v2: half of the keys go to it, each key always to the same version. */
    CHECK_STATUS(loopai_runtime_begin_rollout(rt, 2, &err), LOOPAI_OK);
    CHECK(err == NULL);
    json = rollout_json(rt, &failed_here);
    CHECK(json_is(json, "state", "\"in_progress\""));
    CHECK(json_is(json, "stable_version", "1") && json_is(json, "canary_version", "2"));
    CHECK(json_is(json, "stage", "0") && json_is(json, "fraction", "0.5"));
    CHECK(json_is(json, "stages", "[0.5,1.0]"));
    loopai_string_free(json);
    int served[3] = {0, 0, 0};
    for (int i = 0; i < 64; i++) {
        char key[32];
        snprintf(key, sizeof key, "user-%d", i);
        uint32_t first = served_by(rt, "{\"text\": \"hello\"}", key);
        uint32_t again = served_by(rt, "{\"text\": \"WIN a FREE prize, call now\"}", key);
        CHECK(first == again);
        CHECK(first == 1 || first == 2);
        if (first == 1 || first == 2)
            served[first]++;
    }
    CHECK(served[1] > 0 && served[2] > 0);
    /* The arms count an execution once it is in the log: flush first. */
    CHECK_STATUS(loopai_runtime_flush(rt, 30000, NULL), LOOPAI_OK);
    json = rollout_json(rt, &failed_here);
    const char *s, *e;
    CHECK(json != NULL && find_key(json, "canary", &s, &e) &&
          json_int(s, "executions") == 2 * served[2]);
    loopai_string_free(json);

    /* A NULL or non-UTF-8 key is invalid input; the result is untouched. */
    loopai_result_t *r = (loopai_result_t *)0x1;
    const char *input = "{\"text\": \"hello\"}";
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, (const uint8_t *)input, strlen(input), NULL,
                                                 &r, &err),
                 LOOPAI_E_INVALID_INPUT);
    CHECK(loopai_error_code(err) == LOOPAI_E_INVALID_INPUT);
    CHECK(strstr(loopai_error_message(err), "key is NULL") != NULL);
    loopai_error_free(err);
    err = NULL;
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, (const uint8_t *)input, strlen(input),
                                                 "us\xff" "er", &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, (const uint8_t *)"{\"text\": ", 9, "user-1",
                                                 &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, NULL, 0, "user-1", &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_with_key(NULL, (const uint8_t *)input, strlen(input),
                                                 "user-1", &r, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_execute_with_key(rt, (const uint8_t *)input, strlen(input),
                                                 "user-1", NULL, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK(r == (loopai_result_t *)0x1);

    /* Promote: v2 becomes active and serves every key. */
    CHECK_STATUS(loopai_runtime_promote(rt, &version, NULL), LOOPAI_OK);
    CHECK(version == 2);
    CHECK(loopai_runtime_active_version(rt) == 2);
    CHECK(served_by(rt, input, "user-0") == 2);
    json = rollout_json(rt, &failed_here);
    CHECK(json_is(json, "state", "\"promoted\"") && json_is(json, "fraction", "1.0"));
    loopai_string_free(json);

    /* Roll out v3, then roll it back by hand: v2 stays active, v3 is refused from then on. */
    CHECK_STATUS(loopai_runtime_begin_rollout(rt, 3, NULL), LOOPAI_OK);
    version = 0;
    CHECK_STATUS(loopai_runtime_abort_rollout(rt, &version, NULL), LOOPAI_OK);
    CHECK(version == 3);
    CHECK(loopai_runtime_active_version(rt) == 2);
    CHECK(served_by(rt, input, "user-0") == 2);
    json = rollout_json(rt, &failed_here);
    CHECK(json_is(json, "state", "\"rolled_back\""));
    CHECK(json_is(json, "stable_version", "2") && json_is(json, "canary_version", "3"));
    CHECK(json_is(json, "fraction", "0.0"));
    loopai_string_free(json);
    CHECK_STATUS(loopai_runtime_abort_rollout(rt, NULL, NULL), LOOPAI_OK); /* nothing left */
    CHECK_STATUS(loopai_runtime_begin_rollout(rt, 3, &err), LOOPAI_E_ARTIFACT);
    CHECK(strstr(loopai_error_message(err), "rolled back") != NULL);
    loopai_error_free(err);
    err = NULL;
    char *health = NULL;
    CHECK_STATUS(loopai_runtime_health_json(rt, &health, NULL), LOOPAI_OK);
    CHECK(health != NULL && find_key(health, "rollout", &s, &e) &&
          strncmp(s, "{\"state\":\"rolled_back\"", 22) == 0);
    loopai_string_free(health);

    /* NULL arguments. */
    CHECK_STATUS(loopai_runtime_begin_rollout(NULL, 2, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_promote(NULL, &version, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_abort_rollout(NULL, &version, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_rollout_json(NULL, &json, NULL), LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_rollout_json(rt, NULL, NULL), LOOPAI_E_INVALID_INPUT);
    loopai_runtime_free(rt);

    /* A new runtime finds v2 active and the rolled-back rollout. */
    CHECK_STATUS(loopai_runtime_new(dir, "spam", NULL, &rt, NULL), LOOPAI_OK);
    if (rt != NULL) {
        CHECK(loopai_runtime_active_version(rt) == 2);
        json = rollout_json(rt, &failed_here);
        CHECK(json_is(json, "state", "\"rolled_back\""));
        loopai_string_free(json);
        loopai_runtime_free(rt);
    }
    END;
}

TEST(explain_vectors_match_rust) {
    BEGIN;
    const char *dir = getenv("LOOPAI_EXPLAIN_DATA_DIR");
    const char *path = getenv("LOOPAI_EXPLAIN_VECTORS");
    CHECK(dir != NULL && path != NULL);
    if (dir == NULL || path == NULL) {
        END;
        return;
    }
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    if (f == NULL) {
        END;
        return;
    }
    loopai_runtime_t *rt = NULL;
    loopai_error_t *err = NULL;
    CHECK_STATUS(loopai_runtime_new(dir, "spam", NULL, &rt, &err), LOOPAI_OK);
    if (rt == NULL) {
        fprintf(stderr, "%s\n", loopai_error_message(err));
        loopai_error_free(err);
        fclose(f);
        END;
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int count = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        const char *is, *ie, *ks, *ke, *es, *ee;
        int ok = find_key(line, "input", &is, &ie) && find_key(line, "top_k", &ks, &ke) &&
                 find_key(line, "explanation", &es, &ee);
        CHECK(ok);
        if (!ok)
            continue;
        uint32_t top_k = (uint32_t)strtoul(ks, NULL, 10);
        char *json = NULL;
        CHECK_STATUS(loopai_runtime_explain(rt, (const uint8_t *)is, (size_t)(ie - is), top_k,
                                            &json, NULL),
                     LOOPAI_OK);
        if (json == NULL)
            continue;
        /* The same text, byte for byte, as the Rust core wrote it. */
        CHECK(span_eq(es, ee, json));
        if (!span_eq(es, ee, json))
            fprintf(stderr, "vector %d: got %s\n", count, json);
        loopai_string_free(json);
        count++;
    }
    free(line);
    fclose(f);
    CHECK(count >= 10);

    /* Errors: bad input, NULL out; `*out_json` untouched on failure. */
    char *json = NULL;
    const char *bad = "{\"text\": 1}";
    CHECK_STATUS(loopai_runtime_explain(rt, (const uint8_t *)bad, strlen(bad), 3, &json, &err),
                 LOOPAI_E_INVALID_INPUT);
    CHECK(json == NULL);
    CHECK(err != NULL && strstr(loopai_error_message(err), "/text") != NULL);
    loopai_error_free(err);
    const char *good = "{\"text\": \"free prize\"}";
    CHECK_STATUS(loopai_runtime_explain(rt, (const uint8_t *)good, strlen(good), 3, NULL, NULL),
                 LOOPAI_E_INVALID_INPUT);
    CHECK_STATUS(loopai_runtime_explain(NULL, (const uint8_t *)good, strlen(good), 3, &json, NULL),
                 LOOPAI_E_INVALID_INPUT);
    loopai_runtime_free(rt);
    END;
}

int main(void) {
    struct {
        const char *name;
        void (*fn)(int *);
    } tests[] = {
#define T(x) {#x, x}
        T(version_and_status_names),
        T(lifecycle_execute_flush_health_free),
        T(free_flushes_the_execution_log),
        T(shutdown_then_execute_is_closed),
        T(runtime_new_errors),
        T(bad_input_is_an_error_never_a_crash),
        T(four_threads_execute_concurrently),
        T(runtime_from_before_fork_is_closed_in_the_child),
        T(every_pointer_argument_may_be_null),
        T(hostile_inputs_are_refused_with_a_message),
        T(executions_racing_a_shutdown_succeed_or_are_closed),
        T(parity_vectors_bit_for_bit),
        T(explain_vectors_match_rust),
        T(oracle_callback_validates_sampled_executions),
        T(failing_oracle_callbacks_are_counted),
        T(oracle_callback_answers_abstentions_in_the_cascade),
        T(runtime_new_with_oracle_errors_release_user_data),
        T(rollout_routes_by_key_promotes_and_rolls_back),
#undef T
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int f = 0;
        current = tests[i].name;
        tests[i].fn(&f);
        printf("%s %s\n", f ? "FAIL" : "ok  ", tests[i].name);
        if (f)
            failed++;
        else
            passed++;
    }
    printf("c: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
