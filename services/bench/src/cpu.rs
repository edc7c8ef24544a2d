//! The CPU a figure was measured on, printed with every CPU-time result: how fast RSA-2048 is
//! next to a TLS handshake depends on the processor (OpenSSL has AVX-512 IFMA code for RSA),
//! so a ratio means little without it.

/// CPU flags that change OpenSSL's speed for the operations the benches time.
const CRYPTO_FLAGS: [&str; 7] = [
    "avx512f",
    "avx512ifma",
    "adx",
    "bmi2",
    "sha_ni",
    "vaes",
    "aes",
];

/// This machine's processor, from `/proc/cpuinfo` ("unknown" where it cannot be read).
pub(crate) fn describe() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| describe_cpuinfo(&text))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// "<model name>, family F model M, N CPUs, <crypto flags present>", from the text of
/// `/proc/cpuinfo`.
pub(crate) fn describe_cpuinfo(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let cpus = cpuinfo
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim() == "processor")
        })
        .count();
    let flags = field("flags").unwrap_or_default();
    let present: Vec<&str> = CRYPTO_FLAGS
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|have| have == *f))
        .collect();
    format!(
        "{}, family {} model {}, {cpus} CPUs, flags: {}",
        field("model name").unwrap_or_else(|| "unknown".to_string()),
        field("cpu family").unwrap_or_else(|| "?".to_string()),
        field("model").unwrap_or_else(|| "?".to_string()),
        if present.is_empty() {
            "none of interest".to_string()
        } else {
            present.join(" ")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_processor_and_its_crypto_flags() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n\
                    model name\t: AMD EPYC\nflags\t\t: fpu sse2 aes avx2 bmi2 adx sha_ni vaes\n\n\
                    processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n\
                    flags\t\t: fpu sse2 aes avx2 bmi2 adx sha_ni vaes\n";
        assert_eq!(
            describe_cpuinfo(info),
            "AMD EPYC, family 25 model 1, 2 CPUs, flags: adx bmi2 sha_ni vaes aes"
        );
        let ifma = "processor : 0\nmodel name : Xeon\ncpu family : 6\nmodel : 106\n\
                    flags : avx512f avx512ifma adx\n";
        assert_eq!(
            describe_cpuinfo(ifma),
            "Xeon, family 6 model 106, 1 CPUs, flags: avx512f avx512ifma adx"
        );
        assert_eq!(
            describe_cpuinfo(""),
            "unknown, family ? model ?, 0 CPUs, flags: none of interest"
        );
    }
}
