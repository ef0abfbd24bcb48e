# frozen_string_literal: true

module VagrantPlugins
  module Ctd
    # Names ctd accepts (1-63 of a-z, 0-9, '-', not leading '-', not all digits) made from
    # what a Vagrantfile says, and the network a machine asks for.
    module Naming
      module_function

      def slug(text)
        s = text.to_s.downcase.gsub(/[^a-z0-9]+/, "-").gsub(/\A-+|-+\z/, "")
        s.empty? ? "x" : s
      end

      def fit(name)
        name = name[0, 63].sub(/-+\z/, "")
        name.match?(/\A\d+\z/) ? "v-#{name}"[0, 63] : name
      end

      # default instance name: the Vagrantfile's directory and the machine's name ("web-default")
      def instance_for(machine)
        fit("#{slug(File.basename(machine.env.root_path.to_s))}-#{slug(machine.name)}")
      end

      def template_for(box_name, box_version)
        fit("vagrant-#{slug(box_name)}-#{slug(box_version)}")
      end

      # [network, static ip or nil, subnet to make it with or nil] or [nil, nil, nil]
      def network_of(machine)
        cfg = machine.provider_config
        _, opts = machine.config.vm.networks.find { |type, _| type == :private_network }
        return [cfg.network, nil, cfg.network_subnet] if opts.nil?
        net = opts[:ctd__network] || cfg.network
        raise CtdError, "private_network needs a ctd network: ctd__network: NAME (or ctd.network)" unless net
        ip = opts[:type].to_s == "dhcp" ? nil : opts[:ip]
        [net, ip, opts[:ctd__subnet] || cfg.network_subnet]
      end
    end
  end
end
